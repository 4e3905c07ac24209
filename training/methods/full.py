"""full: every weight trains (torch AdamW); its delta is every weight in full_delta.safetensors with
full_delta.json {"format": "full"} (peft's file names before 2026-12-06: merge reads both)."""

from __future__ import annotations

import json
from collections.abc import Iterable
from pathlib import Path
from typing import TYPE_CHECKING, ClassVar

import torch
from safetensors.torch import load_file, save_file
from torch import nn

import sparsegrad as sg
from training.distributed import World, shard_model
from training.methods.base import FULL_CONFIG, FULL_FORMAT, FULL_WEIGHTS, Attached, Method

if TYPE_CHECKING:
    from training.hparams import Hyper


class Full(Method):
    name: ClassVar[str] = "full"
    float32_weights: ClassVar[bool] = True

    def attach(
        self,
        model: nn.Module,
        hp: Hyper,
        cfg: sg.SparseGradConfig,
        basis_batches: Iterable[dict[str, torch.Tensor]] | None,
        basis: sg.Basis | None,
        world: World,
        sharded: bool,
    ) -> Attached:
        params = sg.enable_full_finetuning(model)
        if sharded:  # FSDP2 once the trainable flags are set, before the optimizer (parameters become shards)
            shard_model(model, set())
            params = list(model.parameters())
        optimizer = torch.optim.AdamW(params, lr=hp.learning_rate, weight_decay=hp.weight_decay)
        return Attached(model, optimizer, basis)

    def write_delta(
        self,
        model: nn.Module,
        out: Path,
        task: str,
        labels: list[str] | None,
        base: str,
        full: dict[str, torch.Tensor] | None,
        value_dtype: str = "float32",
    ) -> None:
        tensors = {
            n: (full[n] if full is not None else p).detach().cpu().contiguous()
            for n, p in model.named_parameters()
        }
        save_file(tensors, str(out / FULL_WEIGHTS), metadata={"format": FULL_FORMAT})
        config = {"format": FULL_FORMAT, "version": 1, "method": self.name, "task": task, "labels": labels}
        (out / FULL_CONFIG).write_text(json.dumps({**config, "base_model_id": base}, indent=2))

    def merge(self, base: nn.Module, delta_dir: Path) -> nn.Module:
        weights = delta_dir / FULL_WEIGHTS
        tensors = load_file(str(weights if weights.is_file() else delta_dir / "adapter_model.safetensors"))
        result = base.load_state_dict(tensors, strict=False)
        if result.unexpected_keys:
            raise ValueError(f"delta holds weights the base lacks: {result.unexpected_keys[:5]}")
        return base
