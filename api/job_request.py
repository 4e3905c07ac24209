"""Turn a create request into a validated `NewJob` (400 naming the param on any problem)."""

from __future__ import annotations

import hashlib
import json
from typing import Any

from sqlalchemy.orm import Session

from api.errors import APIError
from api.schemas import JobCreate
from core.files import get_file
from core.jobs import NewJob
from core.models import File
from core.settings import Settings, device_queue
from rules.datasets import TASK_OF_FORMAT, DatasetReport, check_pair
from rules.hparam_bounds import METHODS, RESOURCE_BOUNDS, HyperparameterProblem, check_rules
from rules.registry import UnknownModel, get_model, list_models, position_limit


def request_hash(body: JobCreate) -> str:
    """Stable hash of a create request (Idempotency-Key reuse with another body is refused)."""
    return hashlib.sha256(json.dumps(body.model_dump(), sort_keys=True).encode()).hexdigest()


def normalize_method(body: JobCreate) -> tuple[dict[str, Any], dict[str, Any]]:
    """Returns (method object as stored, merged hyperparameters). "supervised" means sparsegrad."""
    method = body.method or {"type": "sparsegrad"}
    kind = method.get("type")
    if not isinstance(kind, str):
        raise APIError(400, "method.type is required (sparsegrad, lora, full or meprop)", param="method.type")
    section = method.get(kind) or {}
    if kind == "supervised":
        kind = "sparsegrad"
    if kind not in METHODS:
        raise APIError(400, f"method.type {kind!r} is not one of {', '.join(METHODS)}", param="method.type")
    extra = set(method) - {"type", method["type"]}
    if extra:
        raise APIError(400, f"method: unexpected key(s) {sorted(extra)}", param="method")
    if not isinstance(section, dict) or set(section) - {"hyperparameters"}:
        raise APIError(400, f"method.{method['type']} takes only 'hyperparameters'", param="method")
    nested = section.get("hyperparameters")
    nested = {} if nested is None else nested
    if not isinstance(nested, dict):
        param = f"method.{method['type']}.hyperparameters"
        raise APIError(400, f"{param} must be an object of name: value, got {json_type(nested)}", param=param)
    hyper = {**(body.hyperparameters or {}), **nested}
    for key in ("n_epochs", "batch_size", "learning_rate_multiplier"):
        hyper.setdefault(key, "auto")
    return {"type": kind, kind: {"hyperparameters": hyper}}, hyper


def json_type(value: Any) -> str:
    """The JSON name of a parsed value's type, for messages ("a list", "a number", ...)."""
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, int | float):
        return "a number"
    return {dict: "an object", list: "a list", str: "a string", type(None): "null"}.get(
        type(value), "a value"
    )


def check_hyperparameters(
    hyper: dict[str, Any],
    method: str,
    task: str,
    n_train: int,
    validation: bool,
    max_length: int | None,
    devices: int = 1,
) -> None:
    """The engine's own checks (rules.hparam_bounds): a job accepted here is accepted by the engine."""
    try:
        check_rules(
            hyper,
            method=method,
            task=task,
            n_train=n_train,
            validation=validation,
            model_max_length=max_length,
            devices=devices,
            prefix="hyperparameters.",
        )
    except HyperparameterProblem as exc:
        raise APIError(400, str(exc), param=f"hyperparameters.{exc.param}") from None


def _file_row(session: Session, tenant_id: str, file_id: str, param: str) -> File:
    row = get_file(session, tenant_id, file_id)
    if row is None:
        raise APIError(400, f"{param}: no such file {file_id!r}", param=param, code="file_not_found")
    return row


def _usable_report(row: File, param: str) -> DatasetReport:
    if row.purpose != "fine-tune" or row.report is None:
        raise APIError(
            400, f"{param}: file {row.id!r} has purpose {row.purpose!r}, not 'fine-tune'", param=param
        )
    report = DatasetReport.from_dict(row.report)
    if not report.ok:
        raise APIError(400, f"{param}: {report.describe()}", param=param, code="invalid_file")
    return report


def build_new_job(session: Session, settings: Settings, tenant_id: str, body: JobCreate) -> NewJob:
    """Validate model, files, task match and method; 400 naming the param otherwise."""
    try:
        entry = get_model(body.model, settings.models_path)
    except UnknownModel:
        names = ", ".join(m.name for m in list_models(settings.models_path)) or "none"
        raise APIError(
            400, f"Model {body.model!r} is not available for fine-tuning; available: {names}", param="model"
        ) from None
    train_row = _file_row(session, tenant_id, body.training_file, "training_file")
    valid_row = (
        _file_row(session, tenant_id, body.validation_file, "validation_file")
        if body.validation_file
        else None
    )
    session.commit()  # the rows are read: no transaction (on SQLite, the write lock) while they are checked
    train = _usable_report(train_row, "training_file")
    if valid_row is not None:
        valid = _usable_report(valid_row, "validation_file")
        problems = check_pair(train, valid)
        if problems:
            text = "; ".join(p.message for p in problems[:5])
            raise APIError(
                400, f"validation_file does not match training_file: {text}", param="validation_file"
            )
    data_task = TASK_OF_FORMAT.get(train.format or "", None)
    wanted = "a chat or prompt/completion" if entry.task == "causal_lm" else "a classification"
    if data_task != entry.task:
        raise APIError(
            400,
            f"training_file has {train.format} data (a {data_task} task) but model {entry.name!r} is a "
            f"{entry.task} model; use {wanted} file or another model",
            param="training_file",
            code="task_mismatch",
        )
    devices = requested_devices(body.resources, settings.max_devices)
    method, hyper = normalize_method(body)
    check_hyperparameters(
        hyper,
        method["type"],
        entry.task,
        train.examples,
        valid_row is not None,
        position_limit(entry),
        devices,
    )
    return NewJob(
        tenant_id=tenant_id,
        model=entry.name,
        task=entry.task,
        method=method,
        hyperparameters=hyper,
        seed=body.seed if body.seed is not None else 42,
        suffix=body.suffix or None,
        metadata=body.metadata,
        training_file=body.training_file,
        validation_file=body.validation_file,
        queue=device_queue(settings.job_queue, devices),
        devices=devices,
    )


def requested_devices(resources: dict[str, Any] | None, ceiling: int) -> int:
    """`resources.devices` (default 1): a whole number within RESOURCE_BOUNDS and this deployment's
    SGFT_MAX_DEVICES; a 400 naming the problem otherwise (a job no worker could take is refused, not left
    queued)."""
    if resources is None:
        return 1
    extra = sorted(set(resources) - set(RESOURCE_BOUNDS))
    if extra:
        raise APIError(400, f"resources: unknown key(s) {extra}; known: devices", param="resources")
    value = resources.get("devices", 1)
    param = "resources.devices"
    if not isinstance(value, int) or isinstance(value, bool):
        raise APIError(400, f"{param} must be a whole number, got {json_type(value)}", param=param)
    low, high = RESOURCE_BOUNDS["devices"]
    if not low <= value <= high:
        shown = repr(value) if len(repr(value)) <= 20 else "a longer number"
        raise APIError(400, f"{param} must be between {low} and {high}, got {shown}", param=param)
    if value > ceiling:
        raise APIError(
            400,
            f"{param}: {value} devices asked, but this service's workers run a job on at most {ceiling} "
            f"(SGFT_MAX_DEVICES); ask for {ceiling} or fewer",
            param=param,
            code="devices_unavailable",
        )
    return value
