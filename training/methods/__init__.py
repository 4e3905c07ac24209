"""The fine-tuning methods, each one registered `Method` object (training.methods.base), as peft has one tuner
per method: REGISTRY is the one place that lists them, and everything in the engine that depends on the
method asks the method's object. Its names are exactly the job API's torch-free list,
rules.hparam_bounds.METHODS, in the same order (tests/training/test_methods.py).

The functions below are the engine's entry points by method name (the job's `method` field).
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from torch import nn

import sparsegrad as sg
from training.distributed import SINGLE, World
from training.methods.base import (
    DELTA_META,
    FULL_CONFIG,
    FULL_FORMAT,
    FULL_WEIGHTS,
    Method,
    Prepared,
    load_trainable_state,
)
from training.methods.full import Full
from training.methods.lora import Lora
from training.methods.sparse import MeProp, SparseGrad

if TYPE_CHECKING:
    from training.hparams import Hyper

__all__ = [
    "DELTA_META",
    "FULL_CONFIG",
    "FULL_FORMAT",
    "FULL_WEIGHTS",
    "REGISTRY",
    "Method",
    "Prepared",
    "delta_stats",
    "get_method",
    "load_trainable_state",
    "prepare",
    "save_delta",
    "sparse_config",
    "trainable_state",
    "uses_basis",
]

REGISTRY: dict[str, Method] = {m.name: m for m in (SparseGrad(), Lora(), Full(), MeProp())}


def get_method(name: str) -> Method:
    """The registered method called `name` (ValueError for any other name)."""
    try:
        return REGISTRY[name]
    except KeyError:
        raise ValueError(f"unknown method {name!r}") from None


def uses_basis(name: str) -> bool:
    """Whether method `name` computes a basis first (and so takes support_block, selection, a memory fit)."""
    return name in REGISTRY and REGISTRY[name].basis


def sparse_config(
    method: str,
    hp: Hyper,
    task: str,
    labels: list[str] | None,
    base_id: str,
    library: dict[str, Any] | None = None,
) -> sg.SparseGradConfig:
    """The SparseGradConfig of a job; `library`: SparseGradConfig fields the job API does not offer
    (JobSpec.library)."""
    return get_method(method).config(hp, task, labels, base_id, library)


def prepare(
    method: str,
    model: nn.Module,
    hp: Hyper,
    cfg: sg.SparseGradConfig,
    basis_batches: Iterable[dict[str, torch.Tensor]] | None,
    basis: sg.Basis | None = None,
    world: World = SINGLE,
    sharded: bool = False,
) -> Prepared:
    """Apply `method` to `model` (in place but for LoRA); a `basis` given (resume) skips the basis phase.
    On several processes (`world`) every rank holds the same basis, support and optimizer state."""
    return get_method(method).prepare(model, hp, cfg, basis_batches, basis, world, sharded)


def delta_stats(model: nn.Module, method: str, value_dtype: str = "float32") -> dict[str, int]:
    """What the method's delta holds now: "delta_nnz" (stored numbers: a sparse delta's ΔC entries, or the
    trainable parameters of LoRA / full) and "delta_bytes" (its tensors' bytes, as `save_delta` writes;
    `value_dtype`: a sparse delta's value precision, the job's delta_dtype)."""
    return get_method(method).delta_stats(model, value_dtype)


def trainable_state(model: nn.Module, method: str) -> dict[str, torch.Tensor]:
    """Everything training changes, by state-dict name: trainable parameters, plus for sparsegrad/meprop the
    injected layers' live weights and sparse buffers (ΔC, support). The basis is saved apart."""
    return get_method(method).trainable_state(model)


def save_delta(
    model: nn.Module,
    method: str,
    out: Path,
    task: str,
    labels: list[str] | None,
    base: str,
    extra: dict[str, Any],
    full: dict[str, torch.Tensor] | None = None,
    value_dtype: str = "float32",
) -> Path:
    """Write the method's delta to `out` (+ sgft_delta.json) and return it (Method.save_delta);
    `value_dtype`: a sparse delta's value precision (the job's delta_dtype)."""
    return get_method(method).save_delta(model, out, task, labels, base, extra, full, value_dtype)
