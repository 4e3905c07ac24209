"""Where and in which precision a job trains: a setting (`SGFT_PRECISION`), not "is CUDA present".

| precision | weights | compute |
| --- | --- | --- |
| fp32 | float32 | float32 |
| bf16 | float32 | bf16 autocast (activations and their gradients in bf16) |
| bf16-weights | frozen weights in bf16, trainable ones float32 | bf16 autocast |
| auto | bf16 on CUDA, fp32 on CPU | |

With bf16-weights a SparseGrad / MeProp layer keeps its bf16 weight frozen and runs ΔW beside it
(`sparsegrad.sidepath`), so no update rounds away; LoRA's adapters and every dense trainable (head, norms,
full fine-tuning's weights) stay float32.
"""

from __future__ import annotations

from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

PRECISIONS = ("auto", "fp32", "bf16", "bf16-weights")


@dataclass(frozen=True)
class Precision:
    name: str  # resolved: fp32 | bf16 | bf16-weights
    device: torch.device
    autocast_dtype: torch.dtype | None
    frozen_dtype: torch.dtype  # storage of weights that do not train

    def autocast(self) -> AbstractContextManager[Any]:
        if self.autocast_dtype is None:
            return nullcontext()
        return torch.autocast(self.device.type, dtype=self.autocast_dtype)


def resolve_precision(name: str = "auto", device: torch.device | None = None) -> Precision:
    """The Precision for a setting value; `device` defaults to CUDA where present, else CPU."""
    if name not in PRECISIONS:
        raise ValueError(f"precision must be one of {PRECISIONS}, got {name!r}")
    if device is None:
        device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "auto":
        name = "bf16" if device.type == "cuda" else "fp32"
    if name == "fp32":
        return Precision(name, device, None, torch.float32)
    frozen = torch.bfloat16 if name == "bf16-weights" else torch.float32
    return Precision(name, device, torch.bfloat16, frozen)


@torch.no_grad()
def set_storage(model: nn.Module, frozen_dtype: torch.dtype) -> int:
    """Store every floating-point parameter that does not train in `frozen_dtype` and every one that trains in
    float32 (in place; parameters keep their identity, so an optimizer built before, with no state yet, still
    holds them). A SparseGrad layer's ΔW moves to or from its side path (SparseGradLinear.set_weight_dtype).
    Returns the bytes of the frozen weights."""
    import sparsegrad as sg

    layers = sg.sparse_layers(model).values()
    for layer in layers:
        layer.set_weight_dtype(frozen_dtype)
    placeholders = {id(layer.coef) for layer in layers}  # their gradient's dtype is the layer's affair
    frozen = 0
    for p in model.parameters():
        if not p.is_floating_point() or id(p) in placeholders:
            continue
        want = torch.float32 if p.requires_grad else frozen_dtype
        if p.dtype != want:
            p.data = p.data.to(want)
        if not p.requires_grad:
            frozen += p.numel() * p.element_size()
    return frozen
