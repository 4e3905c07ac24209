"""Outcomes that tell the truth: a diverging loss fails the run, a collapse to the majority label is
warned about, and with a validation file the result is the evaluated step of lowest validation loss.

- Divergence: a training loss that is NaN/inf, or above DIVERGE_FACTOR x the run's first step's loss for
  DIVERGE_STEPS consecutive steps, raises `Diverged` (error code "diverged") naming the step and a smaller
  learning rate.
- Majority label: a classification run whose kept validation accuracy is at most the most frequent
  validation label's share plus MAJORITY_MARGIN gets a warning.
- Best step: each evaluation (step >= 1) that lowers the best valid_loss writes the delta of that moment to
  `work_dir/best-delta` (on disk, not a copy in memory: a full fine-tune's delta is every weight); a
  checkpoint carries it, so a resumed run still knows its best step. With result_checkpoint "best" and a
  best step before the last, that folder becomes the result.
"""

from __future__ import annotations

import math
import shutil
from collections import Counter
from collections.abc import Callable, Sequence
from pathlib import Path

from training.data import Encoded
from training.spec import Diverged

DIVERGE_FACTOR = 3.0
DIVERGE_STEPS = 10
MAJORITY_MARGIN = 0.01
BEST_DELTA = "best-delta"


def _lower(lr: float) -> str:
    return f"lower the learning rate: it was {lr:g}; try {lr / 10:g} (a tenth)"


class DivergenceWatch:
    """Fed each step's training loss; raises Diverged. Rebuilt from a resumed run's history."""

    def __init__(self, learning_rate: float, history: Sequence[dict[str, float]] = ()) -> None:
        self.learning_rate = learning_rate
        self.first: float | None = None
        self.high = 0  # consecutive steps above DIVERGE_FACTOR x first
        for row in history:
            if "train_loss" in row:
                self._count(row["train_loss"])

    def _count(self, loss: float) -> None:
        if self.first is None:
            self.first = loss
        elif self.first > 0 and loss > DIVERGE_FACTOR * self.first:
            self.high += 1
        else:
            self.high = 0

    def check(self, step: int, loss: float) -> None:
        if not math.isfinite(loss):
            raise Diverged(
                f"Training diverged at step {step}: the training loss became {loss}; "
                f"{_lower(self.learning_rate)}",
                param="learning_rate",
            )
        self._count(loss)
        if self.high >= DIVERGE_STEPS:
            assert self.first is not None
            raise Diverged(
                f"Training diverged at step {step}: the training loss stayed above {DIVERGE_FACTOR:g}x its "
                f"first value ({self.first:.4g}) for {self.high} steps (now {loss:.4g}); "
                f"{_lower(self.learning_rate)}",
                param="learning_rate",
            )


def majority_warning(valid: Sequence[Encoded], names: Sequence[str], metrics: dict[str, float]) -> str | None:
    """A warning when the validation accuracy is at most the majority label's share plus one point."""
    accuracy = metrics.get("valid_accuracy")
    if accuracy is None or not valid:
        return None
    label, count = Counter(int(e.label) for e in valid).most_common(1)[0]
    share = count / len(valid)
    if accuracy > share + MAJORITY_MARGIN:
        return None
    name = names[label] if label < len(names) else str(label)
    return (
        f"Validation accuracy {accuracy:.4f} is at most the majority label's share of the validation set "
        f"({share:.4f}, label {name!r}) plus one point: the model may predict that one label for "
        "everything. Try a smaller learning rate, more epochs or more data."
    )


def save_best(work_dir: Path, write: Callable[[Path], Path]) -> Path:
    """Replace work_dir/best-delta with what `write(folder)` writes (a hidden folder, renamed into place)."""
    final, tmp = work_dir / BEST_DELTA, work_dir / f".{BEST_DELTA}.tmp"
    shutil.rmtree(tmp, ignore_errors=True)
    write(tmp)
    shutil.rmtree(final, ignore_errors=True)
    tmp.rename(final)
    return final


def kept_message(mode: str, last: int, last_loss: float, best: int | None, best_loss: float | None) -> str:
    """The event naming the step the result holds, and why."""
    if mode == "best" and best is not None and best_loss is not None and best != last:
        return (
            f"Kept step {best} as the result: lowest valid_loss {best_loss:.4g}; the last step ({last}) had "
            f"{last_loss:.4g}"
        )
    if mode == "best":
        return f"Kept the last step ({last}) as the result: it had the lowest valid_loss, {last_loss:.4g}"
    lowest = ""
    if best is not None and best_loss is not None and best != last:
        lowest = f"; the lowest was {best_loss:.4g} at step {best}"
    return (
        f"Kept the last step ({last}) as the result (result_checkpoint 'last'): valid_loss "
        f"{last_loss:.4g}{lowest}"
    )
