"""Baselines on the same target layers: LoRA (through peft), MeProp (top-k of dL/dW), full fine-tuning."""

from __future__ import annotations

from typing import Any

from torch import nn

from sparsegrad.config import SparseGradConfig
from sparsegrad.memory import matched_lora_rank
from sparsegrad.model import inject
from sparsegrad.targets import find_head_modules, find_target_modules, infer_task


def lora_rank_for(
    model: nn.Module,
    density: float,
    target_modules: str | list[str] = "auto",
    include_gate_proj: bool = False,
    layers: list[int] | None = None,
) -> int:
    """LoRA rank whose trainable parameters on the target layers, Σ r·(D_out + D_in), best match SparseGrad's
    Σ k = Σ round(density·D_out·D_in) (at least 1)."""
    targets = find_target_modules(model, target_modules, include_gate_proj, layers)
    return matched_lora_rank([(t.d_out, t.d_in) for t in targets], density)


def apply_lora(
    model: nn.Module,
    target_modules: str | list[str] = "auto",
    rank: int = 7,
    alpha: float | None = None,
    dropout: float = 0.0,
    train_head: bool | None = None,
    include_gate_proj: bool = False,
    layers: list[int] | None = None,
    task: str | None = None,
    train_rest_dense: bool = False,
) -> Any:
    """Wrap `model` with peft LoRA on the SparseGrad target layers; returns the PeftModel.

    alpha defaults to 2·rank. The task head trains densely (peft `modules_to_save`) by default for
    classification, not for a causal LM, as for SparseGrad. `train_rest_dense` (the paper's GLUE setup, as
    SparseGradConfig.train_rest_dense): every other module with weights also trains densely and is saved
    (`modules_to_save`), and the target layers' biases train (peft bias="lora_only").
    """
    from peft import LoraConfig, get_peft_model

    if rank < 1:
        raise ValueError(f"LoRA rank must be >= 1, got {rank}")
    targets = find_target_modules(model, target_modules, include_gate_proj, layers)
    task = task or infer_task(model)
    train_head = train_head if train_head is not None else task != "causal_lm"
    heads = find_head_modules(model, task) if train_head else []
    if train_rest_dense:
        names = {t.name for t in targets}
        heads += [
            n
            for n, m in model.named_modules()
            if n not in names
            and not any(n == h or n.startswith(h + ".") for h in heads)
            and any(True for _ in m.parameters(recurse=False))
        ]
    lora_cfg = LoraConfig(
        r=rank,
        lora_alpha=alpha if alpha is not None else 2 * rank,  # type: ignore[arg-type]
        lora_dropout=dropout,
        target_modules=[t.name for t in targets],
        modules_to_save=heads or None,
        bias="lora_only" if train_rest_dense else "none",
        fan_in_fan_out=any(t.transposed for t in targets),
    )
    return get_peft_model(model, lora_cfg)


def apply_meprop(model: nn.Module, cfg: SparseGradConfig) -> nn.Module:
    """MeProp as the paper configured it: top-k of dL/dW in the original basis, same k and layers as
    SparseGrad (identity basis; no preliminary phase). Use `make_optimizer` and `save_delta` as usual."""
    if cfg.support != "dynamic":
        raise ValueError("MeProp re-selects its top-k every step: use support='dynamic'")
    return inject(model, cfg, None, method="meprop")


def enable_full_finetuning(model: nn.Module) -> list[nn.Parameter]:
    """Full fine-tuning: every parameter trains; returns them (for torch.optim.AdamW)."""
    for p in model.parameters():
        p.requires_grad_(True)
    return list(model.parameters())
