"""Hyper-parameters: each a bounded number (or choice) or "auto"; "auto" resolved from data and method.

"auto" rules (n = training examples, method as in the job):

| name | auto | bounds |
| --- | --- | --- |
| n_epochs | ceil(3000 / n) clamped to [2, 10] when n < 20,000, else 1 | [1, 50] |
| batch_size | classification: 8 (n < 500), 16 (n < 5,000), else 32; causal_lm: 2 (n < 50), 4 | [1, 512] |
| learning_rate | table `BASE_LR[task][method]` × learning_rate_multiplier | [1e-7, 0.1] |
| learning_rate_multiplier | 1 (scales the auto LR; not allowed together with learning_rate) | [0.01, 100] |
| dense_learning_rate | learning_rate; what trains densely beside SG/MeProp/LoRA (head, rest) | [1e-7, 0.1] |
| max_seq_length | classification 128, causal_lm 512; never above the model's position limit | [8, 8192] |
| warmup_ratio | 0.1 of the optimizer steps | [0, 0.5] |
| gradient_accumulation_steps | 1 (a step's batch_size examples split into this many parts) | [1, 64] |
| eval_every, checkpoint_every | max(10, ceil(total_steps / 5)) | [1, 1e6] |
| max_steps | none: epochs decide | [1, 1e7] |
| early_stopping_patience | 0 = off (evaluations without a better valid_loss before stopping) | [0, 100] |
| result_checkpoint | "best" (step of lowest valid_loss) with a validation file, else "last" | choice |
| density | 0.01 (SparseGrad / MeProp: share of MLP coefficients updated per step) | [1e-4, 1] |
| max_delta_density | none (unbounded); cap on the delta's share of each layer's coefficients | [1e-4, 1] |
| basis_steps | 10 (SparseGrad's preliminary gradient steps) | [1, 200] |
| basis_probe_steps | 0 (off); n: fit the head n steps for the basis phase, then restore it | [0, 1000] |
| per_layer_basis | false (one HOSVD basis per role, shared by all blocks); true: one per layer | bool |
| support | "dynamic" ("fixed") | choice |
| selection | "adam" (top-k of dense-Adam steps): classification, 100+ steps; else "gradient" | choice |
| bias_correction | "global" (sparse entries' Adam bias correction counts optimizer steps); "entry" | choice |
| support_block | causal LM 2, else none: supports stay in a block of x·k (x·density >= 1: none) | [1, 1000] |
| lora_rank | rank whose trainable MLP parameters match SparseGrad's k (lora_rank_for) | [1, 512] |
| target_modules | "auto" (MLP up/down); names, suffixes or globs (`*.mlp.*_proj`): list, comma list | text |
| train_layernorm | false | bool |
| train_rest_dense | false (true: every non-target weight also trains, the paper's GLUE setup) | bool |
| lr_scheduler | "linear" ("cosine"), after linear warmup | choice |
| weight_decay | 0.0 | [0, 1] |
| eval_at_start | true: evaluate before the first step (the "before" numbers) | bool |

result_checkpoint "best" keeps the evaluated step (>= 1) whose valid_loss is lowest: the same criterion
early_stopping_patience counts from, so a run stopped early publishes the step `patience` evaluations before
the stop, and one that ran to the end its best evaluation (training.outcome). "last" publishes the last step.

The base learning rates are starting values, not a tuned optimum: bench/quality.py measures them on SST-2
(all-MiniLM-L6-v2); only SST-2 may be used to change them.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Any

from core.hparam_auto import BASE_LR, auto_batch_size, auto_epochs, auto_learning_rate, plan_steps
from core.hparam_bounds import (
    BOOLS,
    CHOICES,
    DEFAULT_DENSITY,
    NUMBER_BOUNDS,
    delta_cap_problem,
    target_patterns,
)
from training.spec import HyperparameterError

# The auto rules for epochs, batch size and base rate live in core.hparam_auto (the API estimate uses them).
CAUSAL_SUPPORT_BLOCK = 2.0  # auto_support_block, and the block the memory budget falls back to
KNOWN = sorted([*NUMBER_BOUNDS, *CHOICES, *BOOLS, "target_modules"])


@dataclass
class Hyper:
    """Resolved hyper-parameters (no "auto" left except lora_rank=None: chosen once the model is loaded)."""

    n_epochs: float
    batch_size: int
    learning_rate: float
    dense_learning_rate: float
    max_seq_length: int
    warmup_ratio: float
    gradient_accumulation_steps: int
    eval_every: int
    checkpoint_every: int
    max_steps: int | None
    early_stopping_patience: int
    density: float
    max_delta_density: float | None
    basis_steps: int
    basis_probe_steps: int
    per_layer_basis: bool
    support: str
    selection: str
    bias_correction: str
    support_block: float | None
    lora_rank: int | None
    target_modules: str | list[str]
    train_layernorm: bool
    train_rest_dense: bool
    lr_scheduler: str
    weight_decay: float
    eval_at_start: bool
    result_checkpoint: str
    total_steps: int
    steps_per_epoch: int

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def is_auto(value: Any) -> bool:
    """A hyper-parameter left to the engine: missing, None or "auto"."""
    return value is None or value == "auto"


def check_number(name: str, value: Any) -> float | int:
    """A bounded number; HyperparameterError naming the bound otherwise."""
    low, high, integer = NUMBER_BOUNDS[name]
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        raise HyperparameterError(f"{name} must be a number or 'auto', got {value!r}", param=name)
    if integer and value != int(value):
        raise HyperparameterError(f"{name} must be a whole number, got {value!r}", param=name)
    if not low <= value <= high:
        raise HyperparameterError(f"{name} must be between {low:g} and {high:g}, got {value!r}", param=name)
    return int(value) if integer else float(value)


def _target_modules(value: Any) -> str | list[str]:
    try:
        return target_patterns("auto" if is_auto(value) else value)
    except ValueError as exc:
        raise HyperparameterError(str(exc), param="target_modules") from None


def validate(raw: dict[str, Any]) -> None:
    """Refuse unknown names and out-of-range values before anything is loaded."""
    for name, value in raw.items():
        if name not in KNOWN:
            raise HyperparameterError(
                f"unknown hyperparameter {name!r}; known: {', '.join(KNOWN)}", param=name
            )
        if is_auto(value):
            continue
        if name in NUMBER_BOUNDS:
            check_number(name, value)
        elif name in CHOICES and value not in CHOICES[name]:
            raise HyperparameterError(f"{name} must be one of {CHOICES[name]}, got {value!r}", param=name)
        elif name in BOOLS and not isinstance(value, bool):
            raise HyperparameterError(f"{name} must be true or false, got {value!r}", param=name)
        elif name == "target_modules":
            _target_modules(value)
    if raw.get("selection") == "adam" and raw.get("support") == "fixed":
        raise HyperparameterError(
            "selection 'adam' applies to support 'dynamic' only (a fixed support moves the same k entries "
            "every step)",
            param="selection",
        )
    if not is_auto(raw.get("learning_rate")) and not is_auto(raw.get("learning_rate_multiplier")):
        raise HyperparameterError(
            "give learning_rate or learning_rate_multiplier, not both (the multiplier scales the auto rate)",
            param="learning_rate_multiplier",
        )


def resolve(
    raw: dict[str, Any],
    n_train: int,
    task: str,
    method: str,
    model_max_length: int,
    validation: bool = False,
) -> Hyper:
    """Validate `raw` and fill every "auto" (see the module table). `model_max_length`: position limit;
    `validation`: the job has a validation file."""
    validate(raw)

    def get(name: str, auto: Any) -> Any:
        value = raw.get(name)
        if is_auto(value):
            return auto
        return check_number(name, value) if name in NUMBER_BOUNDS else value

    batch_size = get("batch_size", auto_batch_size(n_train, task))
    accum = get("gradient_accumulation_steps", 1)
    if accum > batch_size:
        raise HyperparameterError(
            f"gradient_accumulation_steps ({accum}) must not exceed batch_size ({batch_size}): each step's "
            "batch is split into that many micro-batches",
            param="gradient_accumulation_steps",
        )
    max_len = get("max_seq_length", min(128 if task == "classification" else 512, model_max_length))
    if max_len > model_max_length:
        raise HyperparameterError(
            f"max_seq_length must be at most {model_max_length} for this model (its position limit), "
            f"got {max_len}",
            param="max_seq_length",
        )
    epochs = get("n_epochs", auto_epochs(n_train))
    max_steps = get("max_steps", None)
    steps_per_epoch, total = plan_steps(n_train, batch_size, epochs, max_steps)
    every = max(10, math.ceil(total / 5))
    support = get("support", "dynamic")
    density = get("density", DEFAULT_DENSITY)
    problem = delta_cap_problem(method, raw)
    if problem:
        raise HyperparameterError(problem, param="max_delta_density")
    block = get("support_block", auto_support_block(method, task))
    if block is not None and block * density >= 1:
        block = None  # a block as large as the layer confines nothing
    lr = get("learning_rate", None)
    if lr is None:
        lr = auto_learning_rate(task, method, get("learning_rate_multiplier", 1.0))
        lr = check_number("learning_rate", lr)
    kept = get("result_checkpoint", "best" if validation else "last")
    if kept == "best" and not validation:
        raise HyperparameterError(
            "result_checkpoint 'best' picks the step of lowest validation loss: it needs a validation_file",
            param="result_checkpoint",
        )
    if method == "full" and not is_auto(raw.get("dense_learning_rate")):
        raise HyperparameterError(
            "dense_learning_rate applies to sparsegrad, meprop and lora; "
            "full trains every weight at learning_rate",
            param="dense_learning_rate",
        )
    return Hyper(
        n_epochs=float(epochs),
        batch_size=batch_size,
        learning_rate=lr,
        dense_learning_rate=get("dense_learning_rate", lr),
        max_seq_length=max_len,
        warmup_ratio=get("warmup_ratio", 0.1),
        gradient_accumulation_steps=accum,
        eval_every=get("eval_every", every),
        checkpoint_every=get("checkpoint_every", every),
        max_steps=max_steps,
        early_stopping_patience=get("early_stopping_patience", 0),
        density=density,
        max_delta_density=get("max_delta_density", None),
        basis_steps=get("basis_steps", 10),
        basis_probe_steps=get("basis_probe_steps", 0),
        per_layer_basis=get("per_layer_basis", False),
        support=support,
        selection=get("selection", auto_selection(method, task, support, total)),
        bias_correction=get("bias_correction", "global"),
        support_block=block,
        lora_rank=get("lora_rank", None),
        target_modules=_target_modules(raw.get("target_modules")),
        train_layernorm=get("train_layernorm", False),
        train_rest_dense=get("train_rest_dense", False),
        lr_scheduler=get("lr_scheduler", "linear"),
        weight_decay=get("weight_decay", 0.0),
        eval_at_start=get("eval_at_start", True),
        result_checkpoint=kept,
        total_steps=total,
        steps_per_epoch=steps_per_epoch,
    )


def auto_support_block(method: str, task: str) -> float | None:
    """SparseGrad on a causal LM confines its supports to a block of 2k coefficients per layer: on
    SmolLM2-135M the step took about half the unconfined one's time and its peak memory 1.05x LoRA's
    (unconfined: 1.42x; bf16 weights, CPU), at a validation loss still below LoRA's at the same rate
    (README; docs/benchmarks.md)."""
    return CAUSAL_SUPPORT_BLOCK if method == "sparsegrad" and task == "causal_lm" else None


def auto_selection(method: str, task: str, support: str, total_steps: int) -> str:
    """SparseGrad's selection rule: "adam" (dense moments, the k largest Adam steps move) for classification
    runs long enough for the moments to tell steady gradients from noise, else the paper's "gradient".
    SST-2 on MiniLM: over 126 steps "adam" gained 0.9 points (README); over 8 steps it learned less (0.565
    against 0.66 on 200 dev lines)."""
    sparsegrad_dynamic = method == "sparsegrad" and support == "dynamic"
    return "adam" if sparsegrad_dynamic and task == "classification" and total_steps >= 100 else "gradient"


def get_lr(step: int, base_lr: float, warmup_steps: int, total_steps: int, kind: str = "linear") -> float:
    """LR of optimizer step `step` (0-based): linear warmup to base_lr, then linear or cosine decay to 0."""
    if warmup_steps > 0 and step < warmup_steps:
        return base_lr * (step + 1) / warmup_steps
    decay_steps = max(1, total_steps - warmup_steps)
    progress = min(1.0, (step - warmup_steps) / decay_steps)
    if kind == "cosine":
        return base_lr * 0.5 * (1.0 + math.cos(math.pi * progress))
    return base_lr * (1.0 - progress)


def in_use(hp: Hyper, task: str, method: str, lora_rank: int | None) -> dict[str, Any]:
    """Every hyper-parameter's value in use, "auto" resolved (what a started job shows): the Hyper fields
    but the step counts, with `learning_rate_multiplier` = learning_rate / the task's and method's base
    rate and `lora_rank` as LoRA chose it."""
    values = {k: v for k, v in hp.to_dict().items() if k not in ("total_steps", "steps_per_epoch")}
    values["n_epochs"] = int(hp.n_epochs) if float(hp.n_epochs).is_integer() else hp.n_epochs
    values["learning_rate_multiplier"] = float(f"{hp.learning_rate / BASE_LR[task][method]:.6g}")
    values["lora_rank"] = lora_rank if lora_rank is not None else hp.lora_rank
    return values
