"""The training engine: a job spec + JSONL files -> a trained model, metrics, checkpoints and a delta.

    from training import run_training, merge_delta
    result = run_training(JobSpec(model="all-MiniLM-L6-v2", method="sparsegrad"), train, valid, work_dir)

It calls back through `Hooks` and never touches the database, the web or the queue (see training/spec.py).
"""

from training.hparams import get_lr
from training.loop import run_training
from training.merge import merge_delta
from training.spec import (
    DataError,
    Diverged,
    Hooks,
    HyperparameterError,
    JobSpec,
    ModelLoadError,
    OutOfMemory,
    StepInfo,
    TrainingError,
    TrainResult,
)

__all__ = [
    "DataError",
    "Diverged",
    "Hooks",
    "HyperparameterError",
    "JobSpec",
    "ModelLoadError",
    "OutOfMemory",
    "StepInfo",
    "TrainResult",
    "TrainingError",
    "get_lr",
    "merge_delta",
    "run_training",
]
