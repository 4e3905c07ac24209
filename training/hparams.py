"""Hyper-parameters: each a bounded number (or choice) or "auto"; "auto" resolved from data and method.

Every hyper-parameter, its bounds or choices, what "auto" gives and its help are in the one table
rules.hparam_bounds.PARAMS, with the rules that link fields (check_rules); the API checks requests with the
same table and rules, so a job it accepts resolves here. The auto rules are rules.hparam_auto.

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

from rules.hparam_auto import BASE_LR, auto_batch_size, auto_epochs, auto_learning_rate, plan_steps
from rules.hparam_bounds import (
    DEFAULT_DENSITY,
    NUMBER_BOUNDS,
    HyperparameterProblem,
    check_rules,
    check_value,
    is_auto,
    target_patterns,
)
from training.methods import uses_basis
from training.spec import HyperparameterError

# The auto rules for epochs, batch size and base rate live in rules.hparam_auto (the API estimate uses them).
CAUSAL_SUPPORT_BLOCK = 2.0  # auto_support_block, and the block the memory budget falls back to
TASK_SUPPORT_BLOCK = 20.0  # auto_support_block for classification and regression
# "auto" delta_dtype: a SparseGrad / MeProp delta's values (the basis columns are bf16 values whatever it is);
# the engine puts ΔC on its grid before every evaluation, so the model evaluated is the delta downloaded
DELTA_DTYPE = "bfloat16"


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
    support: str
    selection: str
    support_block: float | None
    delta_dtype: str
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


def check_number(name: str, value: Any) -> float | int:
    """A bounded number (table rules.hparam_bounds); HyperparameterError naming the bound otherwise."""
    try:
        check_value(name, value)
    except HyperparameterProblem as exc:
        raise HyperparameterError(str(exc), param=exc.param) from None
    return int(value) if NUMBER_BOUNDS[name][2] else float(value)


def resolve(
    raw: dict[str, Any],
    n_train: int,
    task: str,
    method: str,
    model_max_length: int,
    validation: bool = False,
    devices: int = 1,
) -> Hyper:
    """Validate `raw` and fill every "auto" (see the module table). `model_max_length`: position limit;
    `validation`: the job has a validation file; `devices`: processes it trains on."""
    try:  # the API ran the same checks (rules.hparam_bounds): a job it accepted passes here
        check_rules(
            raw,
            method=method,
            task=task,
            n_train=n_train,
            validation=validation,
            model_max_length=model_max_length,
            devices=devices,
        )
    except HyperparameterProblem as exc:
        raise HyperparameterError(str(exc), param=exc.param) from None

    def get(name: str, auto: Any) -> Any:
        value = raw.get(name)
        if is_auto(value):
            return auto
        return check_number(name, value) if name in NUMBER_BOUNDS else value

    batch_size = get("batch_size", auto_batch_size(n_train, task))
    accum = get("gradient_accumulation_steps", 1)
    max_len = get("max_seq_length", min(128 if task == "classification" else 512, model_max_length))
    epochs = get("n_epochs", auto_epochs(n_train))
    max_steps = get("max_steps", None)
    steps_per_epoch, total = plan_steps(n_train, batch_size, epochs, max_steps)
    every = max(10, math.ceil(total / 5))
    support = get("support", "dynamic")
    density = get("density", DEFAULT_DENSITY)
    block = get("support_block", auto_support_block(method, task))
    if block is not None and block * density >= 1:
        block = None  # a block as large as the layer confines nothing
    lr = get("learning_rate", None)
    if lr is None:
        lr = auto_learning_rate(task, method, get("learning_rate_multiplier", 1.0))
        lr = check_number("learning_rate", lr)
    kept = get("result_checkpoint", "best" if validation else "last")
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
        support=support,
        selection=get("selection", auto_selection(method, task, support, total)),
        support_block=block,
        delta_dtype=get("delta_dtype", DELTA_DTYPE),
        lora_rank=get("lora_rank", None),
        target_modules=target_patterns(raw.get("target_modules")),
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
    """SparseGrad confines its supports to a block of coefficients per layer. A causal LM's is 2k: on
    SmolLM2-135M the step took about half the unconfined one's time and its peak memory 1.05x LoRA's
    (unconfined: 1.42x; bf16 weights, CPU), at a validation loss still below LoRA's at the same rate, and the
    delta is 4.8% of the dense MLP ΔW in float32 (README; docs/benchmarks.md). Other tasks take 20k: on
    MiniLM (SST-2, 2,000 lines, 2 epochs, seeds 0-4) its bf16 delta is 22% of the dense float32 MLP ΔW (the
    unconfined job's: 61%) at −0.23 ± 0.39 points of dev accuracy paired, within
    the −0.3 a default may lose; 8k and 12k lost 0.55 and 0.46 (docs/benchmarks.md, "Delta size")."""
    if not uses_basis(method):
        return None
    return CAUSAL_SUPPORT_BLOCK if task == "causal_lm" else TASK_SUPPORT_BLOCK


def auto_selection(method: str, task: str, support: str, total_steps: int) -> str:
    """SparseGrad's selection rule: "adam" (dense moments, the k largest Adam steps move) for classification
    runs long enough for the moments to tell steady gradients from noise, else the paper's "gradient".
    SST-2 on MiniLM: over 126 steps "adam" gained 0.9 points (README); over 8 steps it learned less (0.565
    against 0.66 on 200 dev lines)."""
    sparsegrad_dynamic = uses_basis(method) and support == "dynamic"
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
