"""Request and response schemas, in the shape of OpenAI's fine-tuning API (create / public / list apart)."""

from __future__ import annotations

from typing import Annotated, Any, Generic, Literal, TypeVar

from pydantic import AfterValidator, BaseModel, ConfigDict, Field

from core.models import Checkpoint, File, Job, JobEvent
from core.queries import EventRecord, JobRecord

T = TypeVar("T")


class ListPage(BaseModel, Generic[T]):
    object: Literal["list"] = "list"
    data: list[T]
    has_more: bool
    first_id: str | None = None
    last_id: str | None = None


class FilePublic(BaseModel):
    id: str
    object: Literal["file"] = "file"
    bytes: int
    created_at: int
    filename: str
    purpose: str
    status: str
    status_details: str | None = None
    expires_at: int | None = None

    @classmethod
    def of(cls, row: File) -> FilePublic:
        return cls(
            id=row.id,
            bytes=row.bytes,
            created_at=int(row.created_at),
            filename=row.filename,
            purpose=row.purpose,
            status=row.status,
            status_details=row.status_details,
        )


class FileDeleted(BaseModel):
    id: str
    object: Literal["file"] = "file"
    deleted: bool = True


def _no_nul(value: str) -> str:
    if "\x00" in value:
        raise ValueError("must not contain a NUL character (\\u0000)")
    return value


NoNul = Annotated[str, AfterValidator(_no_nul)]  # compared with database columns: PostgreSQL refuses NUL
MetaKey = Annotated[str, Field(max_length=64)]
MetaValue = Annotated[str, Field(max_length=512)]


class JobCreate(BaseModel):
    """POST /v1/fine_tuning/jobs (and /estimate)."""

    model_config = ConfigDict(extra="forbid")

    model: NoNul = Field(min_length=1, max_length=200)
    training_file: NoNul = Field(min_length=1, max_length=64)
    validation_file: NoNul | None = Field(default=None, max_length=64)
    hyperparameters: dict[str, Any] | None = None
    method: dict[str, Any] | None = None
    suffix: str | None = Field(default=None, max_length=64, pattern=r"^[A-Za-z0-9_.-]*$")
    seed: int | None = Field(default=None, ge=0, le=2**31 - 1)
    # OpenAI's limits: 16 pairs, keys up to 64 characters, values up to 512.
    metadata: dict[MetaKey, MetaValue] | None = Field(default=None, max_length=16)
    integrations: list[Any] | None = None  # accepted for client compatibility; none are supported
    # {"devices": N}: train on N devices (torchrun, docs/distributed.md); checked in api.job_request
    resources: dict[str, Any] | None = None


class ErrorObject(BaseModel):
    message: str
    type: str
    param: str | None = None
    code: str | None = None


class ErrorResponse(BaseModel):
    """Every error answer: OpenAI's shape, `{"error": {"message", "type", "param", "code"}}`."""

    error: ErrorObject


class MethodInfo(BaseModel):
    name: str
    label: str
    sparse_delta: bool  # trains a sparse delta in a basis: `density` and `max_delta_density` apply


class ParamInfo(BaseModel):
    name: str
    kind: Literal["number", "integer", "choice", "bool", "modules"]
    minimum: float | None
    maximum: float | None
    choices: list[str] | None
    auto: str
    description: str


class HyperparameterTable(BaseModel):
    """Every job hyper-parameter (rules.hparam_bounds): bounds or choices, what "auto" gives, help."""

    object: Literal["hyperparameter_table"]
    methods: list[MethodInfo]
    data: list[ParamInfo]
    removed: dict[str, str]


class Readiness(BaseModel):
    """/readyz: "ok" (200) or "unavailable" (503), with each dependency's check."""

    status: Literal["ok", "unavailable"]
    checks: dict[str, str]


class JobError(BaseModel):
    code: str
    message: str
    param: str | None = None


class Progress(BaseModel):
    step: int
    total_steps: int | None
    epoch: float
    seconds_remaining: float | None


class JobPublic(BaseModel):
    id: str
    object: Literal["fine_tuning.job"] = "fine_tuning.job"
    model: str
    created_at: int
    finished_at: int | None
    status: str
    error: JobError | None
    fine_tuned_model: str | None
    hyperparameters: dict[str, Any]
    method: dict[str, Any]
    seed: int
    training_file: str
    validation_file: str | None
    result_files: list[str]
    trained_tokens: int | None
    estimated_finish: int | None
    metadata: dict[str, Any] | None
    organization_id: str
    user_provided_suffix: str | None
    integrations: list[Any] = []
    progress: Progress
    metrics: dict[str, Any]
    attempts: int
    merge_status: str | None = None
    # A cancel or pause asked of a running job that has not stopped yet ("cancel" | "pause"); `status` stays
    # "running" (OpenAI's statuses) until the worker stops at its next step.
    stop_requested: Literal["cancel", "pause"] | None = None
    resources: dict[str, int] = {"devices": 1}

    @classmethod
    def of(cls, job: Job | JobRecord) -> JobPublic:
        """From a Job or the JobRecord of core.queries (same attribute names)."""
        return cls.model_validate(job_fields(job))

    @classmethod
    def answer(cls, job: Job) -> JobPublic:
        """The answer to a cancel or pause: the state the request leads to. A running job with the request
        pending is "cancelling" or "pausing" (it stops at its next step); otherwise the status as stored
        (the final state when it applied at once)."""
        fields = job_fields(job)
        pending = fields["stop_requested"]
        if pending is not None:
            fields["status"] = STOPPING[pending]
        return cls.model_validate(fields)


# The status a cancel / pause answers with while a running job has not stopped yet (never stored).
STOPPING = {"cancel": "cancelling", "pause": "pausing"}


def job_fields(job: Job | JobRecord) -> dict[str, Any]:
    """JobPublic's fields for `job`, in its order and already of its types (validating them changes
    nothing): the hot routes serialise this dict as it is (api.responses), JobPublic.of validates it."""
    error = None
    if job.status == "failed":
        error = {
            "code": job.error_code or "failed",
            "message": job.error_message or "",
            "param": job.error_param,
        }
    hyper, method = shown_hyperparameters(job)
    finish = None
    if job.status == "running" and job.seconds_remaining is not None and job.heartbeat_at:
        finish = int(job.heartbeat_at + job.seconds_remaining)
    return {
        "id": job.id,
        "object": "fine_tuning.job",
        "model": job.model,
        "created_at": int(job.created_at),
        "finished_at": int(job.finished_at) if job.finished_at else None,
        "status": job.status,
        "error": error,
        "fine_tuned_model": job.fine_tuned_model,
        "hyperparameters": hyper,
        "method": method,
        "seed": job.seed,
        "training_file": job.training_file,
        "validation_file": job.validation_file,
        "result_files": list(job.result_files or []),
        "trained_tokens": job.trained_tokens,
        "estimated_finish": finish,
        "metadata": job.meta,
        "organization_id": job.tenant_id,
        "user_provided_suffix": job.suffix,
        "integrations": [],
        "progress": {
            "step": job.step,
            "total_steps": job.total_steps,
            "epoch": job.epoch,
            "seconds_remaining": job.seconds_remaining,
        },
        "metrics": job.metrics or {},
        "attempts": job.attempts,
        "merge_status": job.merge_status,
        "stop_requested": job.stop_request if job.status == "running" else None,
        "resources": {"devices": job.devices or 1},
    }


def shown_hyperparameters(job: Job | JobRecord) -> tuple[dict[str, Any], dict[str, Any]]:
    """(hyperparameters, method) as the job shows them: the request, with the values in use over its "auto"
    once the worker has resolved them (as OpenAI's jobs show theirs)."""
    resolved = job.resolved_hyperparameters
    if not resolved:
        return job.hyperparameters, job.method
    hyper = {**job.hyperparameters, **resolved}
    kind = job.method.get("type")
    section = job.method.get(kind) if isinstance(kind, str) else None
    if not isinstance(section, dict):
        return hyper, job.method
    return hyper, {**job.method, str(kind): {**section, "hyperparameters": hyper}}


def event_id(job_id: str, seq: int) -> str:
    """Public event id: `ftevent-<job hex>-<seq>` (the seq is what pagination compares)."""
    return f"ftevent-{job_id.removeprefix('ftjob-')}-{seq}"


MAX_SEQ = 2**31 - 1  # job_events.seq is an INTEGER column: 32 bits on PostgreSQL


def parse_event_cursor(value: str | None) -> int | None:
    """The seq inside an event id (or a bare number); None when absent."""
    if not value:
        return None
    tail = value.rsplit("-", 1)[-1]
    # ASCII digits only (str.isdigit() also takes '²' or '١', which int() refuses or reads), and no more
    # than the column holds: a larger number is no event of any job, and PostgreSQL refuses to compare it.
    if not (tail.isascii() and tail.isdigit() and len(tail) <= 10 and int(tail) <= MAX_SEQ):
        from api.errors import APIError

        raise APIError(
            400,
            f"after: {value[:80]!r} is not an event id (ftevent-<job>-<number>, or the number alone)",
            param="after",
            code="invalid_value",
        )
    return int(tail)


class EventPublic(BaseModel):
    id: str
    object: Literal["fine_tuning.job.event"] = "fine_tuning.job.event"
    created_at: int
    level: str
    message: str
    type: str
    data: dict[str, Any] | None = None

    @classmethod
    def of(cls, event: JobEvent | EventRecord) -> EventPublic:
        return cls.model_validate(event_fields(event))


def event_fields(event: JobEvent | EventRecord) -> dict[str, Any]:
    """EventPublic's fields for `event`, in its order and of its types (see job_fields)."""
    return {
        "id": event_id(event.job_id, event.seq),
        "object": "fine_tuning.job.event",
        "created_at": int(event.created_at),
        "level": event.level,
        "message": event.message,
        "type": event.type,
        "data": event.data,
    }


class CheckpointPublic(BaseModel):
    id: str
    object: Literal["fine_tuning.job.checkpoint"] = "fine_tuning.job.checkpoint"
    created_at: int
    step_number: int
    metrics: dict[str, Any]
    fine_tuning_job_id: str
    fine_tuned_model_checkpoint: str

    @classmethod
    def of(cls, ckpt: Checkpoint, model_name: str) -> CheckpointPublic:
        return cls(
            id=ckpt.id,
            created_at=int(ckpt.created_at),
            step_number=ckpt.step,
            metrics={"step": ckpt.step, **(ckpt.metrics or {})},
            fine_tuning_job_id=ckpt.job_id,
            fine_tuned_model_checkpoint=f"{model_name}:ckpt-step-{ckpt.step}",
        )


class ModelPublic(BaseModel):
    id: str
    object: Literal["model"] = "model"
    created: int
    owned_by: str
    task: str | None = None
    description: str | None = None


class Estimate(BaseModel):
    object: Literal["fine_tuning.job.estimate"] = "fine_tuning.job.estimate"
    model: str
    method: str
    task: str
    training_examples: int
    validation_examples: int
    approx_tokens_per_epoch: int
    n_epochs: int | float | None
    batch_size: int | None
    learning_rate: float | None = None
    total_steps: int | None
    measured_tokens_per_second: float | None  # this service's finished jobs on the model
    tokens_per_second: float | None = None  # the rate the duration uses: measured, else the table's
    throughput_source: Literal["service", "table"] | None = None
    estimated_seconds: float | None
    note: str
