"""Read-only queries over jobs, events and checkpoints (writes live in core.jobs).

Two flavours of the hot reads: ORM ones on a Session (objects), and async ones for the API's GET routes
(`fetch_job`, `fetch_jobs`, `fetch_events`) that run SQLAlchemy Core statements through core.reader and
return plain records, one SELECT each in the common case. The statements with the same shape as every
request are built once here (values as `bindparam()`s), so nothing is compiled per request.
"""

from __future__ import annotations

from typing import Any, NamedTuple

from sqlalchemy import BindParameter, ColumnElement, Select, bindparam, exists, func, select
from sqlalchemy.orm import Session, aliased

from core.models import Checkpoint, Job, JobEvent
from core.reader import Fetch, Static


class JobRecord(NamedTuple):
    """The columns of a job that its public shape needs (attribute names as on Job)."""

    id: str
    tenant_id: str
    status: str
    model: str
    method: dict[str, Any]
    hyperparameters: dict[str, Any]
    resolved_hyperparameters: dict[str, Any] | None
    seed: int
    suffix: str | None
    meta: dict[str, Any] | None
    training_file: str
    validation_file: str | None
    attempts: int
    heartbeat_at: float | None
    step: int
    total_steps: int | None
    epoch: float
    seconds_remaining: float | None
    metrics: dict[str, Any]
    error_code: str | None
    error_message: str | None
    error_param: str | None
    result_files: list[str]
    trained_tokens: int | None
    fine_tuned_model: str | None
    merge_status: str | None
    created_at: float
    finished_at: float | None
    stop_request: str | None = None  # "cancel" | "pause" asked of a running job, until it stops
    devices: int = 1


class EventRecord(NamedTuple):
    """The columns of an event that its public shape needs (attribute names as on JobEvent)."""

    job_id: str
    seq: int
    created_at: float
    level: str
    type: str
    message: str
    data: dict[str, Any] | None


_JOB_COLUMNS = [getattr(Job, name) for name in JobRecord._fields]
_EVENT_COLUMNS = [getattr(JobEvent, name) for name in EventRecord._fields]
_JOBS_ORDER = (Job.created_at.desc(), Job.id.desc())


def _owned(job_id: Any, tenant_id: Any) -> list[ColumnElement[bool]]:
    return [Job.id == job_id, Job.tenant_id == tenant_id]


def _jobs_where(
    tenant_id: Any, after: Any | None, status: str | None, metadata: dict[str, str] | None
) -> list[ColumnElement[bool]]:
    where = [Job.tenant_id == tenant_id]
    if status:
        where.append(Job.status == status)
    for key, value in (metadata or {}).items():
        where.append(Job.meta[key].as_string() == value)
    if after is not None:
        # The cursor's created_at comes from a subquery (no round trip of its own), and `created_at <=` is
        # an index range condition: the scan starts at the cursor instead of filtering every newer row (a
        # page deep in 10,000 jobs reads ~21 rows, not ~5,000). An unknown cursor makes the page empty.
        cursor = aliased(Job, name="page_cursor")
        cursor_at = (
            select(cursor.created_at)
            .where(cursor.id == after, cursor.tenant_id == tenant_id)
            .scalar_subquery()
        )
        where += [Job.created_at <= cursor_at, (Job.created_at < cursor_at) | (Job.id < after)]
    return where


def _events_where(job_id: Any, after: Any | None, ascending: bool) -> list[ColumnElement[bool]]:
    where = [JobEvent.job_id == job_id]
    if after is not None:
        where.append(JobEvent.seq > after if ascending else JobEvent.seq < after)
    return where


def _events_order(ascending: bool) -> ColumnElement[Any]:
    return JobEvent.seq.asc() if ascending else JobEvent.seq.desc()


# Built once: a poll, a first page, a next page, an events page (either order, with or without a cursor).
_TENANT: BindParameter[str] = bindparam("tenant")
_JOB_ID: BindParameter[str] = bindparam("job_id")
_AFTER: BindParameter[Any] = bindparam("after")  # a job id, or an event seq
_LIMIT: BindParameter[int] = bindparam("limit")
_JOB_BY_ID = Static(select(*_JOB_COLUMNS).where(*_owned(_JOB_ID, _TENANT)))
_JOB_EXISTS = Static(select(Job.id).where(*_owned(_JOB_ID, _TENANT)))
_JOBS_PAGE = {
    cursor: Static(
        select(*_JOB_COLUMNS)
        .where(*_jobs_where(_TENANT, _AFTER if cursor else None, None, None))
        .order_by(*_JOBS_ORDER)
        .limit(_LIMIT)
    )
    for cursor in (False, True)
}
_EVENTS_PAGE = {
    (cursor, ascending): Static(
        select(*_EVENT_COLUMNS)
        .where(exists().where(*_owned(_JOB_ID, _TENANT)))
        .where(*_events_where(_JOB_ID, _AFTER if cursor else None, ascending))
        .order_by(_events_order(ascending))
        .limit(_LIMIT)
    )
    for cursor in (False, True)
    for ascending in (False, True)
}


def get_job(session: Session, tenant_id: str, job_id: str) -> Job | None:
    """The tenant's job, or None (also for another tenant's id)."""
    job = session.get(Job, job_id, populate_existing=True)  # one fresh SELECT, also for a cached row
    return job if job is not None and job.tenant_id == tenant_id else None


async def fetch_job(fetch: Fetch, tenant_id: str, job_id: str) -> JobRecord | None:
    """get_job for the API's poll: one SELECT."""
    rows = await fetch(_JOB_BY_ID, {"job_id": job_id, "tenant": tenant_id})
    return JobRecord._make(rows[0]) if rows else None


def list_jobs(
    session: Session,
    tenant_id: str,
    *,
    after: str | None = None,
    limit: int = 20,
    status: str | None = None,
    metadata: dict[str, str] | None = None,
) -> tuple[list[Job], bool]:
    """Newest first; `after` is the last job id of the previous page (an unknown one is ignored);
    returns (page, has_more)."""
    query = select(Job).where(*_jobs_where(tenant_id, after or None, status, metadata))
    rows = list(session.scalars(query.order_by(*_JOBS_ORDER).limit(limit + 1)))
    if (
        after
        and not rows
        and session.execute(select(Job.id).where(*_owned(after, tenant_id))).first() is None
    ):
        return list_jobs(session, tenant_id, limit=limit, status=status, metadata=metadata)
    return rows[:limit], len(rows) > limit


async def fetch_jobs(
    fetch: Fetch,
    tenant_id: str,
    *,
    after: str | None = None,
    limit: int = 20,
    status: str | None = None,
    metadata: dict[str, str] | None = None,
) -> tuple[list[JobRecord], bool]:
    """list_jobs for the API: one SELECT (two when `after` names no job of the tenant)."""
    statement: Static | Select[Any]
    if status or metadata:  # filters: a statement of its own, compiled for this request
        statement = select(*_JOB_COLUMNS).where(
            *_jobs_where(_TENANT, _AFTER if after else None, status, metadata)
        )
        statement = statement.order_by(*_JOBS_ORDER).limit(_LIMIT)
    else:
        statement = _JOBS_PAGE[bool(after)]
    params = {"tenant": tenant_id, "limit": limit + 1} | ({"after": after} if after else {})
    rows = await fetch(statement, params)
    if after and not rows and not await fetch(_JOB_EXISTS, {"job_id": after, "tenant": tenant_id}):
        return await fetch_jobs(fetch, tenant_id, limit=limit, status=status, metadata=metadata)
    return [JobRecord._make(r) for r in rows[:limit]], len(rows) > limit


def list_events(
    session: Session, job_id: str, *, after: int | None = None, limit: int = 20, ascending: bool = False
) -> tuple[list[JobEvent], bool]:
    """Events by seq: newest first (OpenAI's order; `after` pages to older) or ascending (for watchers)."""
    query = (
        select(JobEvent).where(*_events_where(job_id, after, ascending)).order_by(_events_order(ascending))
    )
    rows = list(session.scalars(query.limit(limit + 1)))
    return rows[:limit], len(rows) > limit


async def fetch_events(
    fetch: Fetch,
    tenant_id: str,
    job_id: str,
    *,
    after: int | None = None,
    limit: int = 20,
    ascending: bool = False,
) -> tuple[list[EventRecord], bool] | None:
    """list_events for the API, of the tenant's job only (None when it has no such job): one SELECT, two
    when the page is empty."""
    params = {"job_id": job_id, "tenant": tenant_id, "limit": limit + 1}
    if after is not None:
        params["after"] = after
    rows = await fetch(_EVENTS_PAGE[after is not None, ascending], params)
    if not rows and not await fetch(_JOB_EXISTS, {"job_id": job_id, "tenant": tenant_id}):
        return None
    return [EventRecord._make(r) for r in rows[:limit]], len(rows) > limit


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
