"""A bounded cache of loaded models: shared bases with their fine-tunes' adapters, and merged copies.

Sizes are the bytes of the tensors each entry holds (a base: its weights; an adapter: its factored delta
and dense parameters; a merged copy: its weights). Loading past `budget` evicts the least recently used
entries first; an entry larger than the budget on its own is refused (ModelTooLarge). Not thread-safe:
the inference server loads and runs models on one thread.
"""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from torch import nn
from transformers import PreTrainedTokenizerBase

from training.merge import _merge, _read_meta, delta_config
from training.methods import REGISTRY
from training.models import load_model, load_tokenizer, max_positions, registry_entry
from training.serving.adapters import Adapter, SharedBase, read_adapter

SHAREABLE = tuple(name for name, method in REGISTRY.items() if method.sparse_delta)


class ModelTooLarge(RuntimeError):
    """One model needs more memory than the whole budget."""


@dataclass
class Served:
    """What a request runs: a model (a shared base, with `adapter` active, or a merged copy)."""

    model: nn.Module
    tokenizer: PreTrainedTokenizerBase
    task: str
    context: int
    adapter: Adapter | None
    labels: list[str] | None
    max_seq_length: int
    mode: str  # "base" | "shared" | "merged"


@dataclass
class _Base:
    shared: SharedBase
    tokenizer: PreTrainedTokenizerBase
    context: int
    nbytes: int


def param_bytes(model: nn.Module) -> int:
    return sum(p.numel() * p.element_size() for p in model.parameters())


class ModelCache:
    """Bases (shared), adapters (per fine-tune) and merged copies, least recently used evicted first."""

    def __init__(self, models_dir: Path | None, budget: int) -> None:
        self.models_dir = models_dir
        self.budget = budget
        self._entries: OrderedDict[str, tuple[int, Any]] = OrderedDict()  # key -> (bytes, object)

    @property
    def used(self) -> int:
        return sum(size for size, _ in self._entries.values())

    def sizes(self) -> dict[str, int]:
        return {key: size for key, (size, _) in self._entries.items()}

    def _get(self, key: str) -> Any:
        if key in self._entries:
            self._entries.move_to_end(key)
            return self._entries[key][1]
        return None

    def _put(self, key: str, size: int, value: Any, keep: tuple[str, ...] = ()) -> None:
        if size > self.budget:
            raise ModelTooLarge(
                f"{key.split(':', 1)[1]} needs {size / 2**20:,.0f} MiB, more than the inference memory "
                f"budget of {self.budget / 2**20:,.0f} MiB (SGFT_INFER_MEMORY)"
            )
        while self._entries and self.used + size > self.budget:
            victim = next((k for k in self._entries if k not in keep), None)
            if victim is None:
                break
            self._evict(victim)
        self._entries[key] = (size, value)

    def _evict(self, key: str) -> None:
        self._entries.pop(key, None)
        if key.startswith("base:"):  # its adapters' hooks live in it: they go with it
            for other in [
                k for k, (_, v) in self._entries.items() if k.startswith("adapter:") and v[0] == key
            ]:
                self._entries.pop(other, None)

    def base(self, name: str, task: str) -> _Base:
        key = f"base:{name}"
        found: _Base | None = self._get(key)
        if found is not None:
            return found
        entry = registry_entry(name, self.models_dir)
        labels = ["0", "1"] if task == "classification" else None  # every fine-tune brings its own head
        model = load_model(entry, task, labels, regression=False).eval()
        tokenizer = load_tokenizer(entry)
        model.config.pad_token_id = tokenizer.pad_token_id  # type: ignore[union-attr]
        for p in model.parameters():
            p.requires_grad_(False)
        loaded = _Base(SharedBase(model), tokenizer, max_positions(entry), param_bytes(model))
        self._put(key, loaded.nbytes, loaded)
        return loaded

    def serve_base(self, name: str, task: str) -> Served:
        b = self.base(name, task)
        return Served(b.shared.model, b.tokenizer, task, b.context, None, None, min(512, b.context), "base")

    def serve_delta(self, model_name: str, base_name: str, task: str, delta_dir: Path) -> Served:
        """The fine-tune `model_name` (its delta in `delta_dir`): on the shared base when it can, else a
        merged copy (LoRA, full, mostly dense deltas)."""
        meta = _read_meta(delta_dir)
        max_len = int(meta.get("max_seq_length") or 128)
        labels = meta.get("labels")
        found = self._get(f"adapter:{model_name}") or self._get(f"merged:{model_name}")
        if found is not None:
            return self._served(found, task, labels, max_len)
        b = self.base(base_name, task)
        if str(meta.get("method")) in SHAREABLE and not _rest_dense(delta_dir):
            adapter = read_adapter(delta_dir, model_name)
            if b.shared.can_share(adapter) is None:
                b.shared.attach(adapter)
                self._put(
                    f"adapter:{model_name}",
                    adapter.nbytes,
                    (f"base:{base_name}", adapter, b),
                    (f"base:{base_name}",),
                )
                return self._served((f"base:{base_name}", adapter, b), task, labels, max_len)
        entry = registry_entry(base_name, self.models_dir)
        regression = task == "classification" and not labels
        fresh = load_model(entry, task, labels, regression)
        merged = _merge(fresh, str(meta["method"]), delta_dir).eval()
        merged.config.pad_token_id = b.tokenizer.pad_token_id  # type: ignore[union-attr]
        value = ("merged", merged, b)
        self._put(f"merged:{model_name}", param_bytes(merged), value)
        return self._served(value, task, labels, max_len)

    def _served(self, value: tuple[str, Any, _Base], task: str, labels: Any, max_len: int) -> Served:
        kind, obj, b = value
        self._get(kind)  # a fine-tune in use keeps its base recent too
        if kind == "merged":
            return Served(obj, b.tokenizer, task, b.context, None, labels, max_len, "merged")
        return Served(b.shared.model, b.tokenizer, task, b.context, obj, labels, max_len, "shared")


def _rest_dense(delta_dir: Path) -> bool:
    config = delta_config(delta_dir)
    return bool((config.get("config") or {}).get("train_rest_dense"))
