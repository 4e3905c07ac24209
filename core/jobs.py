"""THE one module that changes a job's row.

Every status change is a compare-and-set `UPDATE ... WHERE status IN (<allowed sources>)`, so two
processes racing (API cancel vs. worker finish, duplicate deliveries, the reaper) can never both win.
Worker writes also carry `worker_id`: a worker that lost its job (re-queued by the reaper) cannot
overwrite the new owner's progress. Functions commit their own unit of work.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

from sqlalchemy import CursorResult, select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from core.files import get_file
from core.ids import new_id
from core.models import Checkpoint, IdempotencyKey, Job, JobEvent, now
from rules.states import RESUME_FROM, IllegalTransition, JobStatus, check_transition, sources_of

log = logging.getLogger(__name__)


class LostOwnership(Exception):
    """The calling worker no longer owns the job (re-queued, cancelled by the reaper, or finished)."""


class MissingFile(Exception):
    """A file the new job names was deleted after the request was validated."""

    def __init__(self, param: str, file_id: str) -> None:
        super().__init__(f"{param}: no such file {file_id!r}")
        self.param = param


class IdempotencyConflict(Exception):
    """The Idempotency-Key was used before with a different request body."""


@dataclass
class NewJob:
    """Validated fields of a create request."""

    tenant_id: str
    model: str
    task: str
    method: dict[str, Any]
    hyperparameters: dict[str, Any]
    seed: int
    suffix: str | None
    metadata: dict[str, str] | None
    training_file: str
    validation_file: str | None
    queue: str = "cpu"
    devices: int = 1


def rowcount(result: Any) -> int:
    assert isinstance(result, CursorResult)
    return result.rowcount


def worker_tag(worker_id: str | None) -> str:
    """How events name a worker: the random tag of its claim (`host:pid:tag`), never its host or process."""
    return (worker_id or "unknown").rsplit(":", 1)[-1]


def _set_status(
    session: Session,
    job_id: str,
    target: JobStatus,
    extra: dict[str, Any] | None = None,
    sources: frozenset[JobStatus] | None = None,
) -> None:
    """CAS the status to `target` from `sources` (default: every status the table allows); raise
    IllegalTransition (naming the current state) otherwise."""
    values = {"status": target.value, **(extra or {})}
    allowed = sorted(sources) if sources is not None else sources_of(target)
    res = session.execute(update(Job).where(Job.id == job_id, Job.status.in_(allowed)).values(**values))
    if rowcount(res) != 1:
        session.rollback()
        current = session.scalar(select(Job.status).where(Job.id == job_id))
        if current is None:
            raise KeyError(job_id)
        check_transition(job_id, current, target)  # raises with the real state
        raise IllegalTransition(job_id, current, target.value)


def add_event(
    session: Session,
    job_id: str,
    message: str,
    *,
    level: str = "info",
    type: str = "message",
    data: dict[str, Any] | None = None,
) -> JobEvent:
    """Append an event; its `seq` is taken from the job row under the row's write lock (monotonic)."""
    seq = session.execute(
        update(Job).where(Job.id == job_id).values(event_seq=Job.event_seq + 1).returning(Job.event_seq)
    ).scalar_one()
    event = JobEvent(job_id=job_id, seq=seq, level=level, type=type, message=message, data=data)
    session.add(event)
    session.flush()
    return event


def create_job(
    session: Session, new: NewJob, idempotency_key: str | None = None, request_hash: str = ""
) -> tuple[Job, bool]:
    """Insert a job (validated by the caller) and move it to `queued`; returns (job, created).

    With an idempotency key already used for the same request, returns the earlier job, created=False.
    """
    if idempotency_key:
        earlier = _idempotent(session, new.tenant_id, idempotency_key, request_hash)
        if earlier is not None:
            return earlier, False
    for param, file_id in (("training_file", new.training_file), ("validation_file", new.validation_file)):
        # Locked (shared) until the job is committed: a concurrent DELETE waits, then sees the job.
        if file_id and get_file(session, new.tenant_id, file_id, lock="share") is None:
            session.rollback()
            raise MissingFile(param, file_id)
    job = Job(
        id=new_id("ftjob"),
        tenant_id=new.tenant_id,
        status=JobStatus.VALIDATING_FILES.value,
        model=new.model,
        task=new.task,
        method=new.method,
        hyperparameters=new.hyperparameters,
        seed=new.seed,
        suffix=new.suffix,
        meta=new.metadata,
        training_file=new.training_file,
        validation_file=new.validation_file,
        queue=new.queue,
        devices=new.devices,
        metrics={},
        result_files=[],
    )
    session.add(job)
    session.flush()  # the job row first: the idempotency row references it
    if idempotency_key:
        session.add(
            IdempotencyKey(
                tenant_id=new.tenant_id, key=idempotency_key, request_hash=request_hash, job_id=job.id
            )
        )
    try:
        session.flush()
    except IntegrityError:
        # A concurrent request with the same key won the insert: answer with its job.
        session.rollback()
        earlier = _idempotent(session, new.tenant_id, idempotency_key or "", request_hash)
        if earlier is None:
            raise
        return earlier, False
    add_event(session, job.id, f"Created fine-tuning job {job.id}")
    add_event(session, job.id, "Validated training and validation files")
    _set_status(session, job.id, JobStatus.QUEUED)
    add_event(session, job.id, "Job queued")
    session.commit()
    session.refresh(job)
    return job, True


def find_idempotent(session: Session, tenant_id: str, key: str, request_hash: str) -> Job | None:
    """The job an earlier request with this Idempotency-Key created (None: the key is new);
    IdempotencyConflict when that request had another body."""
    return _idempotent(session, tenant_id, key, request_hash)


def _idempotent(session: Session, tenant_id: str, key: str, request_hash: str) -> Job | None:
    row = session.get(IdempotencyKey, (tenant_id, key))
    if row is None:
        return None
    if row.request_hash != request_hash:
        raise IdempotencyConflict(f"Idempotency-Key {key!r} was already used with a different request")
    return session.get(Job, row.job_id)


def mark_enqueued(session: Session, job_id: str) -> None:
    """Record that a run message was sent (the reaper re-sends if nobody claims it in time)."""
    session.execute(update(Job).where(Job.id == job_id).values(enqueued_at=now()))
    session.commit()


def claim(session: Session, job_id: str, worker_id: str) -> Job | None:
    """Take a queued job for `worker_id`; None if it is not queued (a duplicate delivery, or cancelled)."""
    t = now()
    res = session.execute(
        update(Job)
        .where(Job.id == job_id, Job.status == JobStatus.QUEUED.value)
        .values(
            status=JobStatus.RUNNING.value,
            worker_id=worker_id,
            heartbeat_at=t,
            attempts=Job.attempts + 1,
            started_at=t,
            stop_request=None,
        )
    )
    if rowcount(res) != 1:
        session.rollback()
        return None
    job = session.get(Job, job_id)
    assert job is not None
    session.refresh(job)
    resume = f" from checkpoint at step {job.checkpoint_step}" if job.checkpoint_key else ""
    add_event(session, job_id, f"Attempt {job.attempts} started on worker {worker_tag(worker_id)}{resume}")
    session.commit()
    return job


def _owned(session: Session, job_id: str, worker_id: str, **values: Any) -> None:
    """UPDATE the job only while `worker_id` runs it (row locked until commit); else LostOwnership."""
    values = values or {"heartbeat_at": now()}
    res = session.execute(
        update(Job)
        .where(Job.id == job_id, Job.worker_id == worker_id, Job.status == JobStatus.RUNNING.value)
        .values(**values)
    )
    if rowcount(res) != 1:
        session.rollback()
        raise LostOwnership(job_id)


def heartbeat(session: Session, job_id: str, worker_id: str) -> None:
    """Refresh the heartbeat (a background thread calls this during long steps)."""
    _owned(session, job_id, worker_id, heartbeat_at=now())
    session.commit()


def record_progress(
    session: Session,
    job_id: str,
    worker_id: str,
    *,
    step: int,
    total_steps: int,
    epoch: float,
    seconds_remaining: float | None,
    trained_tokens: int,
    metrics: dict[str, float] | None = None,
    event: dict[str, Any] | None = None,
) -> None:
    """Write progress (and optionally merged metrics and a metrics event) in one transaction."""
    values: dict[str, Any] = {
        "heartbeat_at": now(),
        "step": step,
        "total_steps": total_steps,
        "epoch": epoch,
        "seconds_remaining": seconds_remaining,
        "trained_tokens": trained_tokens,
    }
    if metrics:
        current = session.scalar(select(Job.metrics).where(Job.id == job_id)) or {}
        values["metrics"] = {**current, **metrics}
    _owned(session, job_id, worker_id, **values)
    if event is not None:
        message = event.pop("message", f"Step {step}/{total_steps}")
        add_event(session, job_id, message, type="metrics", data=event)
    session.commit()


def worker_event(session: Session, job_id: str, worker_id: str, message: str, level: str = "info") -> None:
    """A message event from the running worker (ignored-by-error if it lost the job)."""
    _owned(session, job_id, worker_id, heartbeat_at=now())
    add_event(session, job_id, message, level=level)
    session.commit()


def record_resolved(session: Session, job_id: str, worker_id: str, values: dict[str, Any]) -> None:
    """The hyper-parameters the running worker trains with ("auto" resolved), shown by the API over the
    request; the request itself stays in `hyperparameters` (a resumed attempt resolves from it again)."""
    _owned(session, job_id, worker_id, resolved_hyperparameters=values, heartbeat_at=now())
    session.commit()


def add_checkpoint(
    session: Session, job_id: str, worker_id: str, step: int, storage_key: str, metrics: dict[str, float]
) -> Checkpoint:
    """Record an uploaded checkpoint and make it the job's resume point."""
    _owned(session, job_id, worker_id, checkpoint_key=storage_key, checkpoint_step=step, heartbeat_at=now())
    ckpt = Checkpoint(id=new_id("ftckpt"), job_id=job_id, step=step, storage_key=storage_key, metrics=metrics)
    session.add(ckpt)
    add_event(session, job_id, f"Checkpoint saved at step {step}", data={"step": step, **metrics})
    session.commit()
    return ckpt


def stop_request(session: Session, job_id: str) -> str | None:
    """The pending "cancel"/"pause" request of a job, if any."""
    return session.scalar(select(Job.stop_request).where(Job.id == job_id))


def succeed(
    session: Session,
    job_id: str,
    worker_id: str,
    *,
    result_files: list[str],
    trained_tokens: int,
    metrics: dict[str, float],
    fine_tuned_model: str,
) -> None:
    """running -> succeeded, with the results."""
    _owned(session, job_id, worker_id)  # still ours?
    _set_status(
        session,
        job_id,
        JobStatus.SUCCEEDED,
        {
            "result_files": result_files,
            "trained_tokens": trained_tokens,
            "metrics": metrics,
            "fine_tuned_model": fine_tuned_model,
            "finished_at": now(),
            "seconds_remaining": 0.0,
            "stop_request": None,
        },
    )
    add_event(session, job_id, "The job has successfully completed")
    session.commit()


def fail(
    session: Session,
    job_id: str,
    code: str,
    message: str,
    param: str | None = None,
    worker_id: str | None = None,
) -> None:
    """-> failed with an error a person can act on. With `worker_id`, only while that worker owns it."""
    if worker_id is not None:
        _owned(session, job_id, worker_id)
    _set_status(
        session,
        job_id,
        JobStatus.FAILED,
        {"error_code": code, "error_message": message, "error_param": param, "finished_at": now()},
    )
    add_event(session, job_id, f"Job failed: {message}", level="error")
    session.commit()


def finish_stopped(session: Session, job_id: str, worker_id: str, target: JobStatus) -> None:
    """The worker honoured a stop request: running -> cancelled | paused. A cancel that arrived while the
    worker was pausing wins (it may have read the pause first)."""
    _owned(session, job_id, worker_id)  # the row is locked from here to the commit
    if session.scalar(select(Job.stop_request).where(Job.id == job_id)) == "cancel":
        target = JobStatus.CANCELLED
    extra: dict[str, Any] = {"stop_request": None, "worker_id": None}
    if target == JobStatus.CANCELLED:
        extra["finished_at"] = now()
    _set_status(session, job_id, target, extra)
    add_event(session, job_id, "Job cancelled" if target == JobStatus.CANCELLED else "Job paused")
    session.commit()


def _stop(session: Session, job: Job, target: JobStatus, reason: str) -> Job:
    """Stop now if nothing runs the job, else ask the worker (it stops at its next step)."""
    session.refresh(job)
    if job.status == JobStatus.RUNNING.value:
        running = update(Job).where(Job.id == job.id, Job.status == JobStatus.RUNNING.value)
        if reason == "pause":  # a pending cancel wins: a pause never replaces it
            running = running.where(Job.stop_request.is_(None) | (Job.stop_request == "pause"))
        res = session.execute(running.values(stop_request=reason))
        if rowcount(res) == 1:
            add_event(session, job.id, f"{reason.capitalize()} requested; stopping at the next step")
            session.commit()
            session.refresh(job)
            return job
        session.rollback()
        session.refresh(job)
        if job.status == JobStatus.RUNNING.value:  # still running: the pause met a pending cancel
            raise IllegalTransition(job.id, "running, with a cancel pending", target.value)
    extra: dict[str, Any] = {"finished_at": now()} if target == JobStatus.CANCELLED else {}
    _set_status(session, job.id, target, extra)
    add_event(session, job.id, "Job cancelled" if target == JobStatus.CANCELLED else "Job paused")
    session.commit()
    session.refresh(job)
    return job


def cancel(session: Session, job: Job) -> Job:
    """Cancel: a queued/paused job at once; a running one cooperatively. IllegalTransition if terminal."""
    return _stop(session, job, JobStatus.CANCELLED, "cancel")


def pause(session: Session, job: Job) -> Job:
    """Pause: a queued job at once; a running one at its next step (keeping a checkpoint)."""
    return _stop(session, job, JobStatus.PAUSED, "pause")


def resume(session: Session, job: Job) -> Job:
    """paused -> queued, from paused only (the caller sends the run message after this commit)."""
    _set_status(session, job.id, JobStatus.QUEUED, {"worker_id": None, "enqueued_at": None}, RESUME_FROM)
    add_event(session, job.id, "Job resumed and queued")
    session.commit()
    session.refresh(job)
    return job


def requeue_stale(session: Session, heartbeat_timeout: float, max_attempts: int) -> list[str]:
    """Running jobs whose heartbeat is older than the timeout: their worker died.

    Each goes back to `queued` (it resumes from its last checkpoint) while attempts < max_attempts; past
    that it fails; one with a pending cancel is cancelled. Returns the ids re-queued (to be re-sent).
    """
    cutoff = now() - heartbeat_timeout
    stale = session.scalars(
        select(Job).where(Job.status == JobStatus.RUNNING.value, Job.heartbeat_at < cutoff)
    ).all()
    requeued: list[str] = []
    for job in stale:
        base = {"worker_id": None, "stop_request": None}
        cas = update(Job).where(
            Job.id == job.id, Job.status == JobStatus.RUNNING.value, Job.heartbeat_at < cutoff
        )
        silent = f"worker {worker_tag(job.worker_id)} stopped sending heartbeats"
        if job.stop_request == "cancel":
            values = {**base, "status": JobStatus.CANCELLED.value, "finished_at": now()}
            message = f"Job cancelled ({silent})"
        elif job.attempts >= max_attempts:
            values = {
                **base,
                "status": JobStatus.FAILED.value,
                "finished_at": now(),
                "error_code": "worker_lost",
                "error_message": f"The job's worker was lost {job.attempts} times (max_attempts="
                f"{max_attempts}); last: {silent}. Check worker logs for out-of-memory kills.",
            }
            message = f"Job failed: {values['error_message']}"
        elif job.stop_request == "pause":
            values = {**base, "status": JobStatus.PAUSED.value}
            message = f"Job paused ({silent})"
        else:
            values = {**base, "status": JobStatus.QUEUED.value, "enqueued_at": None}
            where = f"step {job.checkpoint_step}" if job.checkpoint_key else "the start (no checkpoint yet)"
            message = f"Re-queued after attempt {job.attempts}: {silent}; will resume from {where}"
        if rowcount(session.execute(cas.values(**values))) != 1:
            session.rollback()  # it sent a heartbeat meanwhile
            continue
        add_event(session, job.id, message, level="warning" if values["status"] == "queued" else "error")
        session.commit()
        log.warning("job %s: %s", job.id, message)
        if values["status"] == JobStatus.QUEUED.value:
            requeued.append(job.id)
    return requeued


def lost_queued(session: Session, grace: float) -> list[Job]:
    """Queued jobs whose message was sent more than `grace` seconds ago (or never) and nobody claimed."""
    cutoff = now() - grace
    return list(
        session.scalars(
            select(Job).where(
                Job.status == JobStatus.QUEUED.value,
                (Job.enqueued_at.is_(None) & (Job.created_at < cutoff)) | (Job.enqueued_at < cutoff),
            )
        ).all()
    )


def fine_tuned_name(job: Job) -> str:
    """`ft:<base>:<suffix>:<id>`; the suffix defaults to the method's name."""
    suffix = job.suffix or str(job.method.get("type", "sparsegrad"))
    return f"ft:{job.model}:{suffix}:{job.id.removeprefix('ftjob-')}"
