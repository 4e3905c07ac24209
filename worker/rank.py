"""`torchrun … -m worker.rank run.json`: one rank of a multi-device job. Every rank trains
(training.launch); rank 0 alone gets the database hooks (worker.hooks.JobHooks: progress, metrics, events,
checkpoints uploaded to the artifact store, the stop request that every rank then acts on)."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

from core.settings import get_settings
from core.storage import Storage
from training.launch import exit_rank, run_files
from training.spec import Hooks
from worker.hooks import JobHooks

_recorders: list[JobHooks] = []


def hooks_for(config: dict[str, Any]) -> Hooks:
    """Rank 0's hooks for the job named in the run file's "job" section."""
    job = config["job"]
    settings = get_settings()
    recorder = JobHooks(
        job["id"],
        job["worker_id"],
        settings.database_url,
        Storage(settings.artifacts_url),
        method=job["method"],
        requested=job["requested"],
    )
    _recorders.append(recorder)
    return recorder.hooks()


def main() -> int:
    status = run_files([Path(a) for a in sys.argv[1:]], hooks_for)
    for recorder in _recorders:
        recorder.flush()  # the last step's progress, if throttling held it back
    return status


if __name__ == "__main__":
    exit_rank(main())
