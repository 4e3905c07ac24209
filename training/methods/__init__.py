"""The fine-tuning methods, each one registered `Method` object (training.methods.base), as peft has one tuner
per method: REGISTRY is the one place that lists them, and everything in the engine that depends on the
method asks the method's object. Its names are exactly the job API's torch-free list,
rules.hparam_bounds.METHODS, in the same order (tests/training/test_methods.py).

`get_method(name)` is the engine's entry point by method name (the job's `method` field).
"""

from __future__ import annotations

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

__all__ = [
    "DELTA_META",
    "FULL_CONFIG",
    "FULL_FORMAT",
    "FULL_WEIGHTS",
    "REGISTRY",
    "Method",
    "Prepared",
    "get_method",
    "load_trainable_state",
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
