"""A multi-device job's training processes: `torchrun --nproc-per-node N -m worker.rank run.json`, as a
process group the Celery task owns.

- The agent (worker.agent) runs in a session of its own, so the task ends it and its group with `killpg`;
  it dies with the task's process (parent-death signal), and each rank dies with the agent (training.launch).
- Training and CUDA never touch the Celery process: it only waits, keeps the job's heartbeat, and stops the
  group when the job is taken from it (`lost`).
- Rank 0 writes the outcome to `result.json` (training.launch); `outcome()` turns it back into a
  TrainResult, or raises what rank 0 raised (a TrainingError keeps its code).
"""

from __future__ import annotations

import json
import logging
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

from core import jobs
from training.launch import result_from_json, torchrun_command
from training.spec import JobSpec, TrainingError, TrainResult

log = logging.getLogger(__name__)
STOP_GRACE_S = 10.0


def write_run_file(
    folder: Path,
    spec: JobSpec,
    train: Path,
    valid: Path | None,
    resume: Path | None,
    job: dict[str, Any],
    models_dir: Path,
    precision: str,
    memory_budget: int | None,
    sharding: str = "none",
) -> Path:
    """The run file the ranks read (training.launch); `job`: id, worker_id, method, requested."""
    config = {
        "spec": {
            "model": spec.model,
            "method": spec.method,
            "task": spec.task,
            "hyperparameters": spec.hyperparameters,
            "seed": spec.seed,
        },
        "train": str(train),
        "valid": str(valid) if valid else None,
        "resume_from": str(resume) if resume else None,
        "work_dir": str(folder / "run"),
        "models_dir": str(models_dir),
        "precision": precision,
        "memory_budget": memory_budget,
        "sharding": sharding,
        "result": str(folder / "result.json"),
        "job": job,
    }
    path = folder / "run.json"
    path.write_text(json.dumps(config))
    return path


class RankGroup:
    """torchrun for one job on this machine: start, wait (stopping it if `lost` is set), always reaped."""

    def __init__(self, run_file: Path, nproc: int, log_file: Path) -> None:
        self.run_file = run_file
        self.nproc = nproc
        self.log_file = log_file
        self.proc: subprocess.Popen[bytes] | None = None

    def command(self) -> list[str]:
        return torchrun_command(
            sys.executable, "worker.rank", [self.run_file], self.nproc, agent="worker.agent"
        )

    def __enter__(self) -> RankGroup:
        with self.log_file.open("wb") as out:
            self.proc = subprocess.Popen(
                self.command(),
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,  # its own process group: killpg reaches the agent, never the worker
                cwd=self.run_file.parent,
            )
        log.info("started %d ranks (agent pid %d)", self.nproc, self.proc.pid)
        return self

    def wait(self, lost: threading.Event) -> int:
        """The agent's exit status; stops the group first if the job is taken from this worker."""
        assert self.proc is not None
        while True:
            try:
                return self.proc.wait(timeout=0.5)
            except subprocess.TimeoutExpired:
                if lost.is_set():
                    self.stop()
                    raise jobs.LostOwnership("the job was taken from this worker") from None

    def stop(self) -> None:
        """SIGTERM to the agent's group (torchrun then ends its ranks), SIGKILL after a grace period."""
        if self.proc is None or self.proc.poll() is not None:
            return
        for sig, grace in ((signal.SIGTERM, STOP_GRACE_S), (signal.SIGKILL, 5.0)):
            try:
                os.killpg(self.proc.pid, sig)
            except ProcessLookupError:
                return
            deadline = time.monotonic() + grace
            while time.monotonic() < deadline and self.proc.poll() is None:
                time.sleep(0.1)
            if self.proc.poll() is not None:
                return

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def tail(self, lines: int = 5) -> str:
        try:
            return "\n".join(self.log_file.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return ""


def outcome(result_file: Path, status: int, tail: str) -> TrainResult:
    """Rank 0's result, or the failure it wrote (raised again here), or the exit status when it wrote none."""
    try:
        data = json.loads(result_file.read_text())
    except (OSError, ValueError):
        raise RuntimeError(
            f"the training processes exited with status {status} without a result; last output: {tail}"
        ) from None
    if "result" in data:
        return result_from_json(data["result"])
    error = data["error"]
    if error["type"] == "LostOwnership":
        raise jobs.LostOwnership(error["message"])
    if error["code"] is not None:
        exc = TrainingError(error["message"], error["param"])
        exc.code = error["code"]
        raise exc
    raise RuntimeError(f"{error['type']}: {error['message']}")
