"""The contract between the worker (or the benchmark) and the training engine.

The worker builds a `JobSpec` from the job's row, passes `Hooks` that write progress to the database, and
calls `training.run_training`. Nothing here knows about the web, the database or the queue.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

# A name in the method registry, training.methods.REGISTRY (the same names as the job API's
# rules.hparam_bounds.METHODS); build_run refuses any other.
Method = str
Task = Literal["classification", "causal_lm"]
StopReason = Literal["cancel", "pause"]


@dataclass
class JobSpec:
    """What to train. `hyperparameters` values may be numbers or "auto" (resolved by the engine)."""

    model: str  # a registry name, e.g. "all-MiniLM-L6-v2"
    method: Method = "sparsegrad"
    task: Task | None = None  # None: inferred from the model and the data
    hyperparameters: dict[str, Any] = field(default_factory=dict)
    seed: int = 42
    # SparseGradConfig fields the job API does not offer (rules.hparam_bounds.REMOVED: basis_probe_steps,
    # per_layer_basis, bias_correction), for the bench and library callers; never set from a job's row.
    library: dict[str, Any] = field(default_factory=dict)


@dataclass
class StepInfo:
    step: int  # optimizer steps done, 1-based
    total_steps: int
    epoch: float  # fractional epoch
    loss: float
    learning_rate: float
    tokens_per_second: float
    eta_seconds: float
    trained_tokens: int


@dataclass
class Hooks:
    """Callbacks from the loop. All optional; exceptions raised inside them abort the run."""

    on_step: Callable[[StepInfo], None] | None = None
    on_eval: Callable[[int, dict[str, float]], None] | None = None  # (step, metrics)
    on_checkpoint: Callable[[int, Path, dict[str, float]], None] | None = None  # (step, dir, metrics)
    on_message: Callable[[str], None] | None = None  # human-readable events ("computing basis…")
    on_warning: Callable[[str], None] | None = None  # the same at warning level (None: on_message)
    on_resolved: Callable[[dict[str, Any]], None] | None = None  # hyper-parameters in use, "auto" resolved
    should_stop: Callable[[], StopReason | None] | None = None  # polled once per step


@dataclass
class TrainResult:
    status: Literal["completed", "cancelled", "paused"]
    step: int
    total_steps: int
    trained_tokens: int
    metrics: dict[str, float]  # validation metrics of result_step (and the last train_loss)
    delta_dir: Path | None  # the method's delta files (sparsegrad.delta, peft, full); None unless completed
    checkpoint_dir: Path | None  # latest checkpoint (resume from here)
    history: list[dict[str, float]] = field(default_factory=list)  # per-step/eval rows for metrics file
    result_step: int | None = None  # the step whose weights the delta holds (best or last; None: no delta)
    warnings: list[str] = field(default_factory=list)  # warning-level messages (e.g. majority label)


class TrainingError(Exception):
    """A failure a person can act on. `code` goes to the job's `error.code`."""

    code = "training_error"

    def __init__(self, message: str, param: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.param = param


class DataError(TrainingError):
    code = "invalid_training_data"


class ModelLoadError(TrainingError):
    code = "model_load_failed"


class OutOfMemory(TrainingError):
    code = "out_of_memory"


class HyperparameterError(TrainingError):
    code = "invalid_hyperparameters"


class Diverged(TrainingError):
    """The training loss became NaN/inf or stayed far above its start: the learning rate is too high."""

    code = "diverged"
