"""Fault injection for worker processes started by tests/hardening (on their PYTHONPATH only).

Python imports `sitecustomize` at start-up, so the production code carries no test switches. Enabled by:
- SGFT_FAULT_STEP_SLEEP=<seconds>: every training forward pass sleeps this long (a slower machine), so a
  job lasts long enough to be killed mid-training.
- SGFT_FAULT_MAX_BATCH_TOKENS=<n>: this worker "has memory" for n tokens per batch; a training batch with
  more tokens asks the real CPU allocator for an impossible amount (2**46 bytes, 64 TiB), so the error the
  training loop sees is exactly the one a real out-of-memory allocation raises.
- SGFT_FAULT_MERGE_SLEEP=<seconds>: a merge sleeps this long when it unpacks the delta (the only archive a
  worker extracts), so it lasts long enough to be killed.
The hook sits on the word-embedding lookup (`nn.Embedding` with a vocabulary above 256), which every
forward of a BERT-class model calls once with input_ids (B, T).
"""

from __future__ import annotations

import os

_SLEEP = float(os.environ.get("SGFT_FAULT_STEP_SLEEP", "0") or 0)
_BUDGET = int(os.environ.get("SGFT_FAULT_MAX_BATCH_TOKENS", "0") or 0)

if _SLEEP > 0 or _BUDGET > 0:
    import time
    from typing import Any

    import torch

    def _pre_forward(module: torch.nn.Module, args: tuple[Any, ...]) -> None:
        if not (isinstance(module, torch.nn.Embedding) and module.training and module.num_embeddings > 256):
            return
        ids = args[0] if args else None
        if _BUDGET and isinstance(ids, torch.Tensor) and ids.numel() > _BUDGET:
            torch.empty(1 << 46, dtype=torch.uint8)  # raises the allocator's own out-of-memory error
        if _SLEEP:
            time.sleep(_SLEEP)

    torch.nn.modules.module.register_module_forward_pre_hook(_pre_forward)

_MERGE_SLEEP = float(os.environ.get("SGFT_FAULT_MERGE_SLEEP", "0") or 0)

if _MERGE_SLEEP > 0:
    import tarfile
    import time as _time
    from typing import Any as _Any

    _extractall = tarfile.TarFile.extractall

    def _slow_extractall(self: tarfile.TarFile, *args: _Any, **kwargs: _Any) -> None:
        _time.sleep(_MERGE_SLEEP)
        _extractall(self, *args, **kwargs)

    tarfile.TarFile.extractall = _slow_extractall  # type: ignore[method-assign]
