"""Training hooks that write to the database: throttled progress/metrics, events, checkpoints, stop polling,
and a heartbeat thread that keeps the job alive during long steps."""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

from sqlalchemy.orm import Session

from core import jobs
from core.db import get_sessionmaker
from core.storage import Storage
from training.spec import Hooks, StepInfo, StopReason
from worker.redact import redact

log = logging.getLogger(__name__)

# What a started job shows in `hyperparameters` (beside every name its request gave): the values in use.
SHOWN = ("n_epochs", "batch_size", "learning_rate", "learning_rate_multiplier", "result_checkpoint")
SHOWN_BY_METHOD = {
    "sparsegrad": ("density", "support", "selection", "support_block", "delta_dtype"),
    "meprop": ("density", "delta_dtype"),
    "lora": ("lora_rank",),
}


def shown_settings(values: dict[str, Any], requested: Iterable[str], method: str) -> dict[str, Any]:
    """The resolved values a job shows: SHOWN, its method's own (but those unset, e.g. no support_block), and
    every name the request gave."""
    asked = list(requested)
    names = [n for n in (*SHOWN, *SHOWN_BY_METHOD.get(method, ())) if values.get(n) is not None] + asked
    return {name: values[name] for name in dict.fromkeys(names) if name in values}


class JobHooks:
    """Builds `training.spec.Hooks` for one claimed job. At most ~2 progress writes per second."""

    def __init__(
        self,
        job_id: str,
        worker_id: str,
        db_url: str,
        storage: Storage,
        min_interval: float = 0.5,
        method: str = "sparsegrad",
        requested: Iterable[str] = (),
    ) -> None:
        self.job_id = job_id
        self.method = method
        self.requested = list(requested)
        self.worker_id = worker_id
        self.factory = get_sessionmaker(db_url)
        self.storage = storage
        self.min_interval = min_interval
        self._last_write = 0.0
        self._last_stop_poll = 0.0
        self._stop: StopReason | None = None
        self._pending: StepInfo | None = None
        self.uploaded_steps: set[int] = set()

    def hooks(self) -> Hooks:
        return Hooks(
            on_step=self.on_step,
            on_eval=self.on_eval,
            on_checkpoint=self.on_checkpoint,
            on_message=self.on_message,
            on_warning=self.on_warning,
            on_resolved=self.on_resolved,
            should_stop=self.should_stop,
        )

    def _write_progress(self, info: StepInfo, metrics: dict[str, float] | None = None) -> None:
        event = {
            "step": info.step,
            "total_steps": info.total_steps,
            "train_loss": info.loss,
            "learning_rate": info.learning_rate,
            "tokens_per_second": info.tokens_per_second,
        }
        with self.factory() as s:
            jobs.record_progress(
                s,
                self.job_id,
                self.worker_id,
                step=info.step,
                total_steps=info.total_steps,
                epoch=info.epoch,
                seconds_remaining=info.eta_seconds,
                trained_tokens=info.trained_tokens,
                metrics={"step": info.step, "train_loss": info.loss, **(metrics or {})},
                event=event,
            )
        self._last_write = time.monotonic()
        self._pending = None

    def on_step(self, info: StepInfo) -> None:
        """Progress + a metrics event, throttled; the last step is always written."""
        self._pending = info
        if time.monotonic() - self._last_write >= self.min_interval or info.step >= info.total_steps:
            self._write_progress(info)

    def flush(self) -> None:
        """Write the latest step if throttling held it back."""
        if self._pending is not None:
            self._write_progress(self._pending)

    def on_eval(self, step: int, metrics: dict[str, float]) -> None:
        """Validation metrics go on the job row and into a metrics event."""
        with self.factory() as s:
            job = s.get_one(jobs.Job, self.job_id)
            jobs.record_progress(
                s,
                self.job_id,
                self.worker_id,
                step=job.step,
                total_steps=job.total_steps or step,
                epoch=job.epoch,
                seconds_remaining=job.seconds_remaining,
                trained_tokens=job.trained_tokens or 0,
                metrics=dict(metrics),
                event={"message": f"Evaluation at step {step}", "step": step, **metrics},
            )

    def on_checkpoint(self, step: int, path: Path, metrics: dict[str, float]) -> None:
        """Upload the checkpoint folder, then record it as the resume point."""
        key = f"checkpoints/{self.job_id}/step-{step}"
        self.storage.put_dir(path, key)
        with self.factory() as s:
            jobs.add_checkpoint(s, self.job_id, self.worker_id, step, key, metrics)
        self.uploaded_steps.add(step)

    def on_message(self, message: str) -> None:
        """An event for the user: any server path in it is cut to its last component (worker.redact)."""
        with self.factory() as s:
            jobs.worker_event(s, self.job_id, self.worker_id, redact(message, self.storage.root))

    def on_warning(self, message: str) -> None:
        with self.factory() as s:
            jobs.worker_event(s, self.job_id, self.worker_id, message, level="warning")

    def on_resolved(self, values: dict[str, Any]) -> None:
        """The hyper-parameters in use go on the job row (the API shows them over the request's "auto")."""
        shown = shown_settings(values, self.requested, self.method)
        with self.factory() as s:
            jobs.record_resolved(s, self.job_id, self.worker_id, shown)

    def should_stop(self) -> StopReason | None:
        """The row's stop_request, read at most twice a second."""
        if self._stop is None and time.monotonic() - self._last_stop_poll >= self.min_interval:
            with self.factory() as s:
                request = jobs.stop_request(s, self.job_id)
            self._last_stop_poll = time.monotonic()
            if request in ("cancel", "pause"):
                self._stop = request  # type: ignore[assignment]
        return self._stop


class Heartbeat:
    """A daemon thread refreshing the job's heartbeat (or, with `beat=merges.heartbeat`, its merge's) every
    `interval` seconds while the work runs."""

    def __init__(
        self,
        job_id: str,
        worker_id: str,
        db_url: str,
        interval: float,
        beat: Callable[[Session, str, str], None] = jobs.heartbeat,
    ) -> None:
        self.job_id = job_id
        self.worker_id = worker_id
        self.beat = beat
        self.factory = get_sessionmaker(db_url)
        self.interval = interval
        self.lost = (
            threading.Event()
        )  # set once the job is no longer ours: a multi-device run then ends its group
        self._done = threading.Event()
        self._thread = threading.Thread(target=self._run, name=f"heartbeat-{job_id}", daemon=True)

    def _run(self) -> None:
        while not self._done.wait(self.interval):
            try:
                with self.factory() as s:
                    self.beat(s, self.job_id, self.worker_id)
            except jobs.LostOwnership:
                log.warning("job %s is no longer ours; stopping heartbeats", self.job_id)
                self.lost.set()
                return
            except Exception:  # a passing database error: try again next tick
                log.exception("heartbeat for job %s failed", self.job_id)

    def __enter__(self) -> Heartbeat:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._done.set()
        self._thread.join(timeout=10)
