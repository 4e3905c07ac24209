"""/v1/fine_tuning/jobs: create (idempotent, rate limited), list, get, cancel, pause, resume, merge."""

from __future__ import annotations

import logging
from typing import Annotated

from fastapi import APIRouter, Header, Query, Request
from sqlalchemy.orm import Session

from api.deps import KeyDep, SessionDep, SettingsDep
from api.errors import APIError, error_responses, not_found
from api.job_request import build_new_job, request_hash
from api.responses import JSONBytes, object_response, page_response
from api.schemas import Estimate, HyperparameterTable, JobCreate, JobPublic, ListPage, job_fields
from core import jobs as job_ops
from core import merges, queries
from core.files import get_file
from core.models import Job
from core.queue import send_merge, send_run
from core.reader import reader
from core.settings import Settings
from rules.datasets import DatasetReport
from rules.hparam_auto import auto_batch_size, auto_epochs, auto_learning_rate, plan_steps
from rules.hparam_bounds import describe_table
from rules.states import IllegalTransition
from rules.throughput import TABLE_BASIS, table_throughput

log = logging.getLogger(__name__)
STATE_CHANGE = error_responses(404, 409, 507)
router = APIRouter(
    prefix="/v1/fine_tuning/jobs", tags=["fine-tuning"], responses=error_responses(400, 401, 503)
)


def _enqueue(session: Session, settings: Settings, job: Job) -> None:
    """Send "run job X" after the row is committed; if the broker is down the reaper re-sends later."""
    try:
        send_run(job.id, job.queue, settings)
    except Exception as exc:  # the job stays queued in the database: it is not lost
        log.warning("could not send job %s to the broker (%s); the reaper will re-send it", job.id, exc)
        return
    job_ops.mark_enqueued(session, job.id)


def load_job(session: Session, tenant_id: str, job_id: str) -> Job:
    """The tenant's job or a 404."""
    job = queries.get_job(session, tenant_id, job_id)
    if job is None:
        raise not_found("fine-tuning job", job_id, "fine_tuning_job_id")
    return job


@router.post("", response_model=JobPublic, responses=error_responses(409, 413, 429, 507))
def create_job(
    request: Request,
    body: JobCreate,
    key: KeyDep,
    session: SessionDep,
    settings: SettingsDep,
    idempotency_key: Annotated[str | None, Header(max_length=255)] = None,
) -> JobPublic:
    """Create a fine-tuning job; a retry with the same Idempotency-Key returns the same job."""
    digest = request_hash(body)
    try:
        if idempotency_key:
            # A replay creates nothing: it answers the earlier job and is not counted against the rate
            # limit. Only a key already committed is a replay; concurrent first uses of a key are all
            # counted (one creates the job, the others answer it), so no burst of new jobs gets past.
            earlier = job_ops.find_idempotent(session, key.tenant_id, idempotency_key, digest)
            if earlier is not None:
                return JobPublic.of(load_job(session, key.tenant_id, earlier.id))
        request.app.state.job_limiter.hit(key.id)
        new = build_new_job(session, settings, key.tenant_id, body)
        job, created = job_ops.create_job(session, new, idempotency_key, digest)
    except job_ops.IdempotencyConflict as exc:
        raise APIError(409, str(exc), param="Idempotency-Key", code="idempotency_key_reused") from None
    except job_ops.MissingFile as exc:
        raise APIError(400, str(exc), param=exc.param, code="file_not_found") from None
    if created:
        _enqueue(session, settings, job)
    return JobPublic.of(load_job(session, key.tenant_id, job.id))


@router.get("", response_model=ListPage[JobPublic])
async def list_jobs(
    request: Request,
    key: KeyDep,
    settings: SettingsDep,
    after: str | None = None,
    limit: Annotated[int, Query(ge=1, le=100)] = 20,
    status: str | None = None,
) -> JSONBytes:
    """The tenant's jobs, newest first; filter with `status=` and `metadata[key]=value`."""
    metadata = {
        k[len("metadata[") : -1]: v
        for k, v in request.query_params.items()
        if k.startswith("metadata[") and k.endswith("]")
    }
    rows, more = await queries.fetch_jobs(
        reader(settings.database_url),
        key.tenant_id,
        after=after,
        limit=limit,
        status=status,
        metadata=metadata,
    )
    return page_response([job_fields(j) for j in rows], more)


@router.post("/estimate", response_model=Estimate, responses=error_responses(413, 429))
def estimate(
    request: Request, body: JobCreate, key: KeyDep, session: SessionDep, settings: SettingsDep
) -> Estimate:
    """Examples, approximate tokens, steps and duration, "auto" settings resolved by the engine's rules. The
    duration uses this service's measured throughput on the model, else the measured table
    (rules.throughput); `note` says which."""
    request.app.state.estimate_limiter.hit(key.id)
    new = build_new_job(session, settings, key.tenant_id, body)
    train_row = get_file(session, key.tenant_id, new.training_file)
    assert train_row is not None and train_row.report is not None
    train = DatasetReport.from_dict(train_row.report)
    valid_n = 0
    if new.validation_file:
        valid_row = get_file(session, key.tenant_id, new.validation_file)
        valid_n = DatasetReport.from_dict(valid_row.report).examples if valid_row and valid_row.report else 0
    method = str(new.method["type"])
    hp = new.hyperparameters

    def given(name: str) -> float | None:
        value = hp.get(name)
        return float(value) if isinstance(value, int | float) and not isinstance(value, bool) else None

    epochs = given("n_epochs") or float(auto_epochs(train.examples))
    batch = int(given("batch_size") or auto_batch_size(train.examples, new.task))
    max_steps = given("max_steps")
    per_epoch, steps = plan_steps(train.examples, batch, epochs, int(max_steps) if max_steps else None)
    lr = given("learning_rate") or auto_learning_rate(
        new.task, method, given("learning_rate_multiplier") or 1.0
    )
    tokens = train_row.bytes // 4  # ~4 bytes per token of English text: an approximation, said so in `note`
    measured = queries.throughput(session, new.model)
    rate = measured or table_throughput(new.model, method)
    seconds = tokens * (steps / per_epoch) / rate if rate and per_epoch else None
    note = "Tokens are approximated as bytes/4. 'auto' settings are resolved by the engine's own rules. "
    if measured:
        note += "Duration uses the measured throughput of this service's finished jobs on this model."
    elif rate:
        note += (
            "No finished job on this model yet: duration uses the table of measured throughputs "
            f"({TABLE_BASIS})."
        )
    else:
        note += (
            "No finished job on this model yet and no measured throughput for it in the table: "
            "duration unknown."
        )
    return Estimate(
        model=new.model,
        method=method,
        task=new.task,
        training_examples=train.examples,
        validation_examples=valid_n,
        approx_tokens_per_epoch=tokens,
        n_epochs=int(epochs) if epochs.is_integer() else epochs,
        batch_size=batch,
        learning_rate=lr,
        total_steps=steps,
        measured_tokens_per_second=measured,
        tokens_per_second=rate,
        throughput_source="service" if measured else "table" if rate else None,
        estimated_seconds=seconds,
        note=note,
    )


@router.get("/hyperparameters", response_model=HyperparameterTable)
def hyperparameter_table(key: KeyDep) -> HyperparameterTable:
    """Every hyper-parameter a job accepts: kind, bounds or choices, what "auto" gives, and help; the
    methods; the knobs removed from the job API."""
    return HyperparameterTable.model_validate(describe_table())


@router.get("/{fine_tuning_job_id}", response_model=JobPublic, responses=error_responses(404))
async def get_job(fine_tuning_job_id: str, key: KeyDep, settings: SettingsDep) -> JSONBytes:
    # The job as committed now: a poll is one SELECT, never a cached copy. (No docstring: it would change
    # the OpenAPI description.)
    job = await queries.fetch_job(reader(settings.database_url), key.tenant_id, fine_tuning_job_id)
    if job is None:
        raise not_found("fine-tuning job", fine_tuning_job_id, "fine_tuning_job_id")
    return object_response(job_fields(job))


def _change(session: Session, job: Job, op: str) -> Job:
    try:
        if op == "cancel":
            return job_ops.cancel(session, job)
        if op == "pause":
            return job_ops.pause(session, job)
        return job_ops.resume(session, job)
    except IllegalTransition as exc:
        raise APIError(
            409,
            f"Cannot {op} job {job.id}: it is {exc.current}",
            param="fine_tuning_job_id",
            code="invalid_state",
        ) from None


@router.post("/{fine_tuning_job_id}/cancel", response_model=JobPublic, responses=STATE_CHANGE)
def cancel_job(fine_tuning_job_id: str, key: KeyDep, session: SessionDep) -> JobPublic:
    """Queued or paused: cancelled at once. Running: stops at its next step, keeping its checkpoint; the
    answer's status is then "cancelling" (the job's own status stays "running" until it stops)."""
    job = _change(session, load_job(session, key.tenant_id, fine_tuning_job_id), "cancel")
    return JobPublic.answer(job)


@router.post("/{fine_tuning_job_id}/pause", response_model=JobPublic, responses=STATE_CHANGE)
def pause_job(fine_tuning_job_id: str, key: KeyDep, session: SessionDep) -> JobPublic:
    """Queued: paused at once. Running: checkpoints and pauses at its next step; the answer's status is then
    "pausing" (the job's own status stays "running" until it stops)."""
    return JobPublic.answer(_change(session, load_job(session, key.tenant_id, fine_tuning_job_id), "pause"))


@router.post("/{fine_tuning_job_id}/resume", response_model=JobPublic, responses=STATE_CHANGE)
def resume_job(fine_tuning_job_id: str, key: KeyDep, session: SessionDep, settings: SettingsDep) -> JobPublic:
    """Paused -> queued; it continues from its last checkpoint."""
    job = _change(session, load_job(session, key.tenant_id, fine_tuning_job_id), "resume")
    _enqueue(session, settings, job)
    return JobPublic.of(load_job(session, key.tenant_id, job.id))


@router.post("/{fine_tuning_job_id}/merge", response_model=JobPublic, responses=STATE_CHANGE)
def merge_job(fine_tuning_job_id: str, key: KeyDep, session: SessionDep, settings: SettingsDep) -> JobPublic:
    """Ask a worker to merge the delta into the base model; the merged model is added to result_files.
    Repeating the request while a merge is queued, running or done changes nothing; after a failed merge
    it tries again."""
    job = load_job(session, key.tenant_id, fine_tuning_job_id)
    if job.status != "succeeded":
        raise APIError(
            409, f"Job {job.id} is {job.status}; only a succeeded job can be merged", code="invalid_state"
        )
    if merges.request(session, job.id):
        try:
            send_merge(job.id, job.queue, settings)
        except Exception as exc:  # the merge stays queued in the database: the reaper re-sends it
            log.warning(
                "could not send merge of %s to the broker (%s); the reaper will re-send it", job.id, exc
            )
    return JobPublic.of(load_job(session, key.tenant_id, job.id))
