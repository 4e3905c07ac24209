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
    """3 epochs up to 5,000 examples, 2 below 20,000, one pass above.

    Measured (`python -m bench.epochs`, docs/benchmarks.md, 2026-12-06; SST-2 on all-MiniLM-L6-v2, the
    default SparseGrad job, dev accuracy, seeds 0-1): on 300 lines 2 / 3 / 10 epochs gave 73.80 / 73.45 /
    73.91 (the former rule's 10 took 5.8x the time of 2 for nothing beyond the seed spread); on 2,000 lines
    2 / 3 gave 81.77 / 82.40. Between 5,000 and 20,000 examples nothing was measured: 2, as before."""
    return 1 if n >= 20_000 else 3 if n <= 5_000 else 2


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
