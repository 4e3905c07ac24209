"""The four methods behind one interface: prepare the model, build the optimizer, hold state, save a delta.

- sparsegrad: `compute_basis` on the job's first `basis_steps` batches, `inject`, sparse AdamW.
- meprop: top-k of dL/dW on the same layers with the same k (identity basis).
- lora: peft LoRA on the same target layers; rank matched to SparseGrad's k unless given.
- full: every weight trains (torch AdamW).

Deltas (each folder also holds `sgft_delta.json`: method, task, labels, base model; what merge_delta reads):
sparsegrad/meprop -> sparsegrad.save_delta (docs/delta-format.md); lora -> peft save_pretrained (peft's own
adapter files); full -> every weight in full_delta.safetensors with full_delta.json {"format": "full"}.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import save_file
from torch import nn

import sparsegrad as sg
from training.distributed import SINGLE, World, shard_model
from training.hparams import Hyper

DELTA_META = "sgft_delta.json"
FULL_FORMAT = "full"
# full fine-tuning's delta (every weight); it used peft's file names before 2026-12-06 (merge reads both)
FULL_CONFIG, FULL_WEIGHTS = "full_delta.json", "full_delta.safetensors"


@dataclass
class Prepared:
    """The model to train (a PeftModel for LoRA), its optimizer, and what it took to build."""

    model: nn.Module
    optimizer: torch.optim.Optimizer
    basis: sg.Basis | None
    trainable_parameters: int
    lora_rank: int | None


def sparse_config(
    method: str,
    hp: Hyper,
    task: str,
    labels: list[str] | None,
    base_id: str,
    library: dict[str, Any] | None = None,
) -> sg.SparseGradConfig:
    """The SparseGradConfig of a job (MeProp re-selects its support every step: always dynamic);
    `library`: SparseGradConfig fields the job API does not offer (JobSpec.library)."""
    return sg.SparseGradConfig(
        density=hp.density,
        max_delta_density=hp.max_delta_density,
        target_modules=hp.target_modules,
        support="dynamic" if method == "meprop" else hp.support,  # type: ignore[arg-type]
        support_block=hp.support_block if method == "sparsegrad" else None,
        selection=hp.selection if method == "sparsegrad" else "gradient",  # type: ignore[arg-type]
        basis_steps=hp.basis_steps,
        task=task,  # type: ignore[arg-type]
        labels=labels,
        base_model_id=base_id,
        train_layernorm=hp.train_layernorm,
        train_rest_dense=hp.train_rest_dense,
        **(library or {}),
    )


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
    On several processes (`world`), SparseGrad's Gram sums are summed over the ranks and its dL/dC (MeProp's
    dL/dW) averaged before selection: every rank holds the same basis, support and optimizer state."""
    lora_rank = None
    average = world.reduce_mean if world.active else None
    if method == "full":
        params = sg.enable_full_finetuning(model)
        if sharded:  # FSDP2 once the trainable flags are set, before the optimizer (parameters become shards)
            shard_model(model, set())
            params = list(model.parameters())
        optimizer: torch.optim.Optimizer = torch.optim.AdamW(
            params, lr=hp.learning_rate, weight_decay=hp.weight_decay
        )
    elif method == "lora":
        lora_rank = hp.lora_rank or sg.lora_rank_for(model, hp.density, cfg.target_modules)
        model = sg.apply_lora(
            model,
            target_modules=cfg.target_modules,
            rank=lora_rank,
            task=cfg.task,
            train_rest_dense=hp.train_rest_dense,
        )
        if sharded:
            shard_model(model, set())
        trainable = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
        groups = [{"params": [p for _, p in trainable], "lr": hp.learning_rate}]
        if hp.dense_learning_rate != hp.learning_rate:  # one group when both rates are the same
            groups = [
                {"params": [p for n, p in trainable if "lora_" in n], "lr": hp.learning_rate},
                {"params": [p for n, p in trainable if "lora_" not in n], "lr": hp.dense_learning_rate},
            ]
        optimizer = torch.optim.AdamW(
            [g for g in groups if g["params"]], lr=hp.learning_rate, weight_decay=hp.weight_decay
        )
    elif method == "meprop":
        model = sg.apply_meprop(model, cfg)
        if sharded:
            shard_model(model, _sparse_params(model))
        optimizer = sg.make_optimizer(
            model,
            lr=hp.learning_rate,
            weight_decay=hp.weight_decay,
            dense_lr=hp.dense_learning_rate,
            reduce=average,
        )
    elif method == "sparsegrad":
        if basis is None:
            assert basis_batches is not None
            summed = world.reduce_sum if world.active else None
            basis = sg.compute_basis(model, basis_batches, cfg, reduce=summed)
        model = sg.inject(model, cfg, basis)
        basis.drop_gradients()  # the choices made from them stay in the basis (and its checkpoint file)
        if sharded:  # the frozen rest sharded; the target layers (coefficients, bases, weights) stay whole
            shard_model(model, _sparse_params(model))
        optimizer = sg.make_optimizer(
            model,
            lr=hp.learning_rate,
            weight_decay=hp.weight_decay,
            dense_lr=hp.dense_learning_rate,
            reduce=average,
        )
    else:
        raise ValueError(f"unknown method {method!r}")
    for group in optimizer.param_groups:
        group["base_lr"] = group["lr"]  # the schedule scales each group's own rate (loop.py)
    if method in ("sparsegrad", "meprop"):
        count = sg.count_trainable_parameters(model)
    else:
        count = sum(p.numel() for p in model.parameters() if p.requires_grad)
    return Prepared(model, optimizer, basis, count, lora_rank)


def _sparse_params(model: nn.Module) -> set[nn.Parameter]:
    """Every parameter of the layers SparseGrad or MeProp trains (kept whole under FSDP)."""
    return {p for layer in sg.sparse_layers(model).values() for p in layer.parameters()}


def delta_stats(model: nn.Module, method: str, value_dtype: str = "float32") -> dict[str, int]:
    """What the method's delta holds now: "delta_nnz" (stored numbers: a sparse delta's ΔC entries, or the
    trainable parameters of LoRA / full) and "delta_bytes" (its tensors' bytes, as `save_delta` writes;
    `value_dtype`: a sparse delta's value precision, the job's delta_dtype)."""
    if method in ("sparsegrad", "meprop"):
        size = sg.delta_size(model, value_dtype)
        return {"delta_nnz": size.nnz, "delta_bytes": size.bytes}
    params = [p for p in model.parameters() if p.requires_grad]
    return {
        "delta_nnz": sum(p.numel() for p in params),
        "delta_bytes": sum(p.numel() * p.element_size() for p in params),
    }


def trainable_state(model: nn.Module, method: str) -> dict[str, torch.Tensor]:
    """Everything training changes, by state-dict name: trainable parameters, plus for sparsegrad/meprop the
    injected layers' live weights and sparse buffers (ΔC, support). The basis is saved apart."""
    state = model.state_dict()
    names = {n for n, p in model.named_parameters() if p.requires_grad}
    if method in ("sparsegrad", "meprop"):
        for layer_name in sg.sparse_layers(model):
            prefix = layer_name + "."
            names |= {
                n for n in state if n.startswith(prefix) and not n.startswith((prefix + "P", prefix + "Q"))
            }
            names -= {prefix + "coef"}
    return {n: state[n].detach().cpu().contiguous().clone() for n in sorted(names) if n in state}


def load_trainable_state(model: nn.Module, tensors: dict[str, torch.Tensor]) -> None:
    """Inverse of `trainable_state`: every saved tensor must find its place in the model."""
    result = model.load_state_dict(tensors, strict=False)
    if result.unexpected_keys:
        raise ValueError(f"checkpoint holds tensors this model lacks: {result.unexpected_keys[:5]}")


def _meta(
    method: str, task: str, labels: list[str] | None, base: str, extra: dict[str, Any]
) -> dict[str, Any]:
    regression = task == "classification" and labels is None
    return {
        "method": method,
        "task": task,
        "labels": labels,
        "num_labels": (1 if regression else len(labels or [])) if task == "classification" else None,
        "problem_type": ("regression" if regression else "single_label_classification")
        if task == "classification"
        else None,
        "base_model": base,
        **extra,
    }


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
    """Write the method's delta to `out` (+ sgft_delta.json) and return it. `full`: the whole state dict of
    an FSDP-sharded model (training.distributed.gathered), whose own state dict holds shards; `value_dtype`:
    a sparse delta's value precision (the job's delta_dtype; LoRA and full keep their parameters' dtype)."""
    out.mkdir(parents=True, exist_ok=True)
    if method in ("sparsegrad", "meprop"):
        sg.save_delta(model, out, value_dtype=value_dtype)
    elif method == "lora":
        model.save_pretrained(str(out), state_dict=full)  # type: ignore[operator]
    else:
        tensors = {
            n: (full[n] if full is not None else p).detach().cpu().contiguous()
            for n, p in model.named_parameters()
        }
        save_file(tensors, str(out / FULL_WEIGHTS), metadata={"format": FULL_FORMAT})
        config = {"format": FULL_FORMAT, "version": 1, "method": "full", "task": task, "labels": labels}
        (out / FULL_CONFIG).write_text(json.dumps({**config, "base_model_id": base}, indent=2))
    meta = _meta(method, task, labels, base, extra)
    (out / DELTA_META).write_text(json.dumps(meta, indent=2, sort_keys=True))
    return out
