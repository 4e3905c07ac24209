"""The "auto" rules for the step count: epochs, batch size, base learning rate and the step plan.

Pure arithmetic, no torch: the training engine (training.hparams.resolve) and the API's estimate
(`POST /v1/fine_tuning/jobs/estimate`) call these same functions, so an estimate's steps are the steps
the engine will run on the same file. The rules are documented in training.hparams' table.
"""

from __future__ import annotations

import math

BASE_LR: dict[str, dict[str, float]] = {
    "classification": {"full": 5e-5, "lora": 1e-3, "sparsegrad": 1e-3, "meprop": 1e-3},
    "causal_lm": {"full": 2e-5, "lora": 2e-4, "sparsegrad": 2e-4, "meprop": 2e-4},
}


def auto_epochs(n: int) -> int:
    """ceil(3000 / n) in [2, 10] for small data sets; one pass over 20,000 examples or more."""
    return 1 if n >= 20_000 else min(10, max(2, math.ceil(3000 / max(n, 1))))


def auto_batch_size(n: int, task: str) -> int:
    """classification: 8 (n < 500), 16 (n < 5,000), else 32; causal_lm: 2 (n < 50), else 4."""
    if task == "causal_lm":
        return 2 if n < 50 else 4
    return 8 if n < 500 else 16 if n < 5000 else 32


def auto_learning_rate(task: str, method: str, multiplier: float = 1.0) -> float:
    """The task's and method's base rate times `multiplier`."""
    return BASE_LR[task][method] * multiplier


def plan_steps(n: int, batch_size: int, epochs: float, max_steps: int | None) -> tuple[int, int]:
    """(steps per epoch, total optimizer steps): ceil(n / batch) per epoch, ceil(that x epochs) in all,
    at most `max_steps`."""
    steps_per_epoch = math.ceil(n / batch_size)
    total = math.ceil(steps_per_epoch * epochs)
    return steps_per_epoch, total if max_steps is None else min(total, max_steps)
