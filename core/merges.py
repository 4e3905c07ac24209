"""The merge side task of a succeeded job: asked for, claimed by a worker, kept alive by its heartbeat,
finished, or recovered by the reaper when its worker dies. Every change is a compare-and-set over the
transitions of `rules.states.MERGE_ALLOWED`, as job statuses are (core.jobs)."""

from __future__ import annotations

import logging
from typing import Any

from sqlalchemy import select, update
from sqlalchemy.orm import Session

from core.jobs import LostOwnership, add_event, rowcount, worker_tag
from core.models import Job, now
from rules.states import MERGE_REQUEST_FROM, JobStatus, MergeStatus

log = logging.getLogger(__name__)


def request(session: Session, job_id: str) -> bool:
    """Queue a merge of a succeeded job (a first request, or a retry after a failure). False when one is
    already queued, running or done: the request is then a no-op, as a repeated POST should be."""
    res = session.execute(
        update(Job)
        .where(
            Job.id == job_id,
            Job.status == JobStatus.SUCCEEDED.value,
            Job.merge_status.is_(None) | Job.merge_status.in_([m.value for m in MERGE_REQUEST_FROM if m]),
        )
        .values(merge_status=MergeStatus.QUEUED.value, merge_worker_id=None, merge_heartbeat_at=now())
    )
    if rowcount(res) != 1:
        session.rollback()
        return False
    add_event(session, job_id, "Merge queued")
    session.commit()
    return True


def claim(session: Session, job_id: str, worker_id: str) -> Job | None:
    """queued -> running for `worker_id`; None if the merge is not queued (a duplicate message)."""
    res = session.execute(
        update(Job)
        .where(Job.id == job_id, Job.merge_status == MergeStatus.QUEUED.value)
        .values(
            merge_status=MergeStatus.RUNNING.value,
            merge_worker_id=worker_id,
            merge_heartbeat_at=now(),
            merge_attempts=Job.merge_attempts + 1,
        )
    )
    if rowcount(res) != 1:
        session.rollback()
        return None
    job = session.get_one(Job, job_id)
    session.refresh(job)
    add_event(session, job_id, f"Merging the delta into the base model (attempt {job.merge_attempts})")
    session.commit()
    return job


def _owned(session: Session, job_id: str, worker_id: str, **values: Any) -> None:
    res = session.execute(
        update(Job)
        .where(
            Job.id == job_id,
            Job.merge_worker_id == worker_id,
            Job.merge_status == MergeStatus.RUNNING.value,
        )
        .values(**values)
    )
    if rowcount(res) != 1:
        session.rollback()
        raise LostOwnership(job_id)


def heartbeat(session: Session, job_id: str, worker_id: str) -> None:
    """The merging worker is alive; LostOwnership once the merge was taken from it."""
    _owned(session, job_id, worker_id, merge_heartbeat_at=now())
    session.commit()


def succeed(session: Session, job_id: str, worker_id: str, merged_file: str) -> None:
    """running -> succeeded; the merged model's file joins the job's result files."""
    _owned(session, job_id, worker_id, merge_heartbeat_at=now())  # the row is locked until the commit
    files = session.scalar(select(Job.result_files).where(Job.id == job_id)) or []
    session.execute(
        update(Job)
        .where(Job.id == job_id)
        .values(merge_status=MergeStatus.SUCCEEDED.value, result_files=[*files, merged_file])
    )
    add_event(session, job_id, f"Merged model ready: {merged_file}", data={"file_id": merged_file})
    session.commit()


def fail(session: Session, job_id: str, worker_id: str, detail: str) -> None:
    """running -> failed (a new POST .../merge retries it)."""
    _owned(session, job_id, worker_id, merge_status=MergeStatus.FAILED.value)
    add_event(session, job_id, f"Merge failed: {detail}; POST .../merge to retry", level="error")
    session.commit()


def requeue_stale(session: Session, heartbeat_timeout: float, max_attempts: int) -> list[str]:
    """Running merges whose worker stopped sending heartbeats: queued again while attempts remain, else
    failed. Returns the ids queued again (to be re-sent)."""
    cutoff = now() - heartbeat_timeout
    stale = session.scalars(
        select(Job).where(Job.merge_status == MergeStatus.RUNNING.value, Job.merge_heartbeat_at < cutoff)
    ).all()
    requeued: list[str] = []
    for job in stale:
        silent = f"worker {worker_tag(job.merge_worker_id)} stopped sending heartbeats"
        again = job.merge_attempts < max_attempts
        target = MergeStatus.QUEUED if again else MergeStatus.FAILED
        res = session.execute(
            update(Job)
            .where(
                Job.id == job.id,
                Job.merge_status == MergeStatus.RUNNING.value,
                Job.merge_heartbeat_at < cutoff,
            )
            .values(merge_status=target.value, merge_worker_id=None, merge_heartbeat_at=now())
        )
        if rowcount(res) != 1:
            session.rollback()  # it sent a heartbeat meanwhile
            continue
        if again:
            message, level = f"Merge re-queued after attempt {job.merge_attempts}: {silent}", "warning"
        else:
            message = (
                f"Merge failed: its worker was lost {job.merge_attempts} times (max_attempts={max_attempts});"
                f" last: {silent}. POST .../merge to retry"
            )
            level = "error"
        add_event(session, job.id, message, level=level)
        session.commit()
        log.warning("job %s: %s", job.id, message)
        if again:
            requeued.append(job.id)
    return requeued


def lost_queued(session: Session, grace: float) -> list[tuple[str, str]]:
    """(job id, queue) of merges queued more than `grace` seconds ago that no worker claimed."""
    rows = session.execute(
        select(Job.id, Job.queue).where(
            Job.merge_status == MergeStatus.QUEUED.value, Job.merge_heartbeat_at < now() - grace
        )
    ).all()
    return [(job_id, queue) for job_id, queue in rows]


def mark_sent(session: Session, job_id: str) -> None:
    """A queued merge's message went out again: its grace period starts over."""
    session.execute(
        update(Job)
        .where(Job.id == job_id, Job.merge_status == MergeStatus.QUEUED.value)
        .values(merge_heartbeat_at=now())
    )
    session.commit()
