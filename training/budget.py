"""The device memory budget: SparseGrad's "auto" support and selection are chosen to fit it.

The budget is `SGFT_DEVICE_MEMORY` when set (tests simulate a small GPU with it), else the device's memory
(a CUDA device's total, or the machine's RAM on CPU). SparseGrad's own state (dL/dC, optimizer state, basis,
and the side path of bf16 weights: `sparsegrad.memory.sparse_extra_bytes`) may take half of what the model's
weights leave free; the other half is for activations and transients. The choices, richest first; the first
that fits wins, among those that agree with what the job set explicitly:
  1. the job's own choice (training.hparams: selection "adam" for long classification runs, else
     "gradient"; a dynamic support, in a 2k block for a causal LM, an 8k block otherwise),
  2. dynamic support in the job's block (none if it set none), the paper's selection (state on the
     entries ever selected),
  3. dynamic support in a 2k block (dL/dC and state on the block only),
  4. fixed support in a 2k block (exactly k entries of state per layer).
"""

from __future__ import annotations

import dataclasses
import os

import torch
from torch import nn

import sparsegrad as sg
from sparsegrad.memory import Choice, sparse_extra_bytes
from training.hparams import CAUSAL_SUPPORT_BLOCK as BLOCK
from training.hparams import Hyper

GiB = 2**30


def device_memory(device: torch.device) -> int:
    """Bytes of memory of `device`: a CUDA device's total, else the machine's RAM."""
    if device.type == "cuda":
        return int(torch.cuda.get_device_properties(device).total_memory)
    return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")


def _size(n: int) -> str:
    for unit, scale in (("GiB", GiB), ("MiB", 2**20)):
        if n >= scale:
            return f"{n / scale:.2f} {unit}"
    return f"{n / 1024:.1f} KiB"


def _choice(hp: Hyper) -> Choice:
    return Choice(hp.density, hp.support, hp.selection, hp.support_block)


def fit_to_budget(
    hp: Hyper, explicit: set[str], model: nn.Module, budget: int, source: str, frozen_bytes: int = 4
) -> tuple[Hyper, str]:
    """`hp` with support / selection / support_block (those the job left on "auto") chosen to fit `budget`,
    and the event that says what was chosen and why. `frozen_bytes`: storage of a weight (precision)."""
    layers = [(t.d_out, t.d_in) for t in sg.find_target_modules(model, hp.target_modules)]
    weights = sum(p.numel() for p in model.parameters()) * frozen_bytes
    allowed = max(0, budget - weights) // 2
    ladder = [
        _choice(hp),
        Choice(hp.density, "dynamic", "gradient", hp.support_block),
        Choice(hp.density, "dynamic", "gradient", BLOCK),
        Choice(hp.density, "fixed", "gradient", BLOCK),
    ]
    fixed = {"support": hp.support, "selection": hp.selection, "support_block": hp.support_block}
    ladder = [
        c
        for c in ladder
        if all(getattr(c, name) == value for name, value in fixed.items() if name in explicit)
    ] or [_choice(hp)]
    sized = [(c, sparse_extra_bytes(layers, c, side_path=frozen_bytes < 4)) for c in ladder]
    chosen, need = next(((c, n) for c, n in sized if n <= allowed), sized[-1])
    head = f"Memory budget {_size(budget)} ({source}): SparseGrad state may take {_size(allowed)}"
    first, first_need = sized[0]
    if chosen == first:
        note = f"{chosen.describe()} needs about {_size(need)}"
    else:
        note = f"{first.describe()} would need about {_size(first_need)}, so {chosen.describe()}"
        note += f" (about {_size(need)})"
        if need > allowed:
            note += "; even that is over the budget, so the job may run out of memory"
    new = dataclasses.replace(
        hp, support=chosen.support, selection=chosen.selection, support_block=chosen.support_block
    )
    return new, f"{head}; {note}"
