"""Thin Celery tasks: validate the one JSON argument and hand off to domain code (worker.runner)."""

from __future__ import annotations

import logging

from core.queue import MERGE_JOB, RUN_JOB
from worker.celery_app import app
from worker.runner import merge_job, run_job

log = logging.getLogger(__name__)


@app.task(name=RUN_JOB, acks_late=True, ignore_result=True)
def run_job_task(job_id: str) -> None:
    """Run job `job_id` (a duplicate delivery or a job that is not queued returns quietly)."""
    if not isinstance(job_id, str) or not job_id.startswith("ftjob-"):
        log.error("ignoring malformed run message %r", job_id)
        return
    run_job(job_id)


@app.task(name=MERGE_JOB, acks_late=True, ignore_result=True)
def merge_job_task(job_id: str) -> None:
    """Merge a succeeded job's delta into its base model and publish it as a result file."""
    if not isinstance(job_id, str) or not job_id.startswith("ftjob-"):
        log.error("ignoring malformed merge message %r", job_id)
        return
    merge_job(job_id)
