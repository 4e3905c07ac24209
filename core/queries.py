"""Read-only queries over jobs, events and checkpoints (writes live in core.jobs)."""

from __future__ import annotations

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from core.models import Checkpoint, Job, JobEvent


def get_job(session: Session, tenant_id: str, job_id: str) -> Job | None:
    """The tenant's job, or None (also for another tenant's id)."""
    job = session.get(Job, job_id, populate_existing=True)  # one fresh SELECT, also for a cached row
    return job if job is not None and job.tenant_id == tenant_id else None


def list_jobs(
    session: Session,
    tenant_id: str,
    *,
    after: str | None = None,
    limit: int = 20,
    status: str | None = None,
    metadata: dict[str, str] | None = None,
) -> tuple[list[Job], bool]:
    """Newest first; `after` is the last job id of the previous page; returns (page, has_more)."""
    query = select(Job).where(Job.tenant_id == tenant_id)
    if status:
        query = query.where(Job.status == status)
    for key, value in (metadata or {}).items():
        query = query.where(Job.meta[key].as_string() == value)
    if after:
        cursor = get_job(session, tenant_id, after)
        if cursor is not None:
            # `created_at <=` is an index range condition: the scan starts at the cursor instead of
            # filtering every newer row (a page deep in 10,000 jobs reads ~21 rows, not ~5,000).
            query = query.where(Job.created_at <= cursor.created_at).where(
                (Job.created_at < cursor.created_at) | (Job.id < cursor.id)
            )
    rows = list(session.scalars(query.order_by(Job.created_at.desc(), Job.id.desc()).limit(limit + 1)))
    return rows[:limit], len(rows) > limit


def list_events(
    session: Session, job_id: str, *, after: int | None = None, limit: int = 20, ascending: bool = False
) -> tuple[list[JobEvent], bool]:
    """Events by seq: newest first (OpenAI's order; `after` pages to older) or ascending (for watchers)."""
    query = select(JobEvent).where(JobEvent.job_id == job_id)
    if ascending:
        if after is not None:
            query = query.where(JobEvent.seq > after)
        query = query.order_by(JobEvent.seq.asc())
    else:
        if after is not None:
            query = query.where(JobEvent.seq < after)
        query = query.order_by(JobEvent.seq.desc())
    rows = list(session.scalars(query.limit(limit + 1)))
    return rows[:limit], len(rows) > limit


def list_checkpoints(
    session: Session, job_id: str, *, after: str | None = None, limit: int = 10
) -> tuple[list[Checkpoint], bool]:
    """Checkpoints newest (highest step) first."""
    query = select(Checkpoint).where(Checkpoint.job_id == job_id)
    if after:
        cursor = session.get(Checkpoint, after)
        if cursor is not None and cursor.job_id == job_id:
            query = query.where(Checkpoint.step < cursor.step)
    rows = list(session.scalars(query.order_by(Checkpoint.step.desc()).limit(limit + 1)))
    return rows[:limit], len(rows) > limit


def count_by_status(session: Session) -> dict[str, int]:
    """Number of jobs per status (all tenants), for /metrics."""
    rows = session.execute(select(Job.status, func.count()).group_by(Job.status)).all()
    return {status: int(count) for status, count in rows}


def throughput(session: Session, model: str) -> float | None:
    """Measured tokens/second of this service's succeeded jobs on `model` (None before the first)."""
    rows = session.execute(
        select(Job.trained_tokens, Job.started_at, Job.finished_at)
        .where(Job.model == model, Job.status == "succeeded", Job.trained_tokens.is_not(None))
        .order_by(Job.finished_at.desc())
        .limit(20)
    ).all()
    tokens = sum(int(t or 0) for t, _, _ in rows)
    seconds = sum(max(0.0, (f or 0.0) - (s or 0.0)) for _, s, f in rows)
    return tokens / seconds if tokens and seconds > 0 else None
