"""What a model name means for inference, and the API's link to the inference server (no torch here).

A name is a base model of the registry, a fine-tune (`ft:<base>:<suffix>:<id>`, a succeeded job of the
caller's tenant) or one of its checkpoints (`…:ckpt-step-N`). Another tenant's fine-tune is unknown (404), as
it is in /v1/models. The API sends the inference server a resolved `Target` (base name, task, where the delta
lies in the artifact store), never a path a user chose.
"""

from __future__ import annotations

import hashlib
import hmac
import re
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Literal

from sqlalchemy import select
from sqlalchemy.orm import Session

from core.jobs import fine_tuned_name
from core.models import Checkpoint, File, Job
from rules.registry import UnknownModel, get_model

CHECKPOINT = re.compile(r"^(?P<model>ft:.+):ckpt-step-(?P<step>\d{1,9})$")
TOKEN_HEADER = "X-SGFT-Infer-Token"


class NotServable(Exception):
    """The name cannot be served: `status` 404 (unknown to this tenant) or 409 (not ready / no delta)."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


@dataclass(frozen=True)
class Target:
    model: str  # the public name
    base: str
    task: str  # "causal_lm" | "classification"
    kind: Literal["base", "delta", "checkpoint"]
    storage_key: str | None  # the delta's .tar.gz, or the checkpoint folder (holding `delta/`)

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


def internal_token(secret_key: str) -> str:
    """The shared secret the API shows the inference server (derived from SGFT_SECRET_KEY)."""
    return hmac.new(secret_key.encode(), b"sgft-infer", hashlib.sha256).hexdigest()


def _unknown(name: str) -> NotServable:
    return NotServable(404, f"The model {name!r} does not exist or you do not have access to it.")


def resolve(session: Session, tenant_id: str, name: str, models_dir: Path | None) -> Target:
    """The Target for `name` as seen by `tenant_id`; NotServable otherwise."""
    if not name.startswith("ft:"):
        try:
            entry = get_model(name, models_dir)
        except UnknownModel:
            raise _unknown(name) from None
        return Target(name, entry.name, entry.task, "base", None)
    ckpt = CHECKPOINT.match(name)
    model_name = ckpt.group("model") if ckpt else name
    job_id = "ftjob-" + model_name.rsplit(":", 1)[-1]
    job = session.get(Job, job_id)
    if (
        job is None
        or job.tenant_id != tenant_id
        or (job.fine_tuned_model or fine_tuned_name(job)) != model_name
    ):
        raise _unknown(name)
    if ckpt is not None:
        step = int(ckpt.group("step"))
        row = session.scalars(
            select(Checkpoint).where(Checkpoint.job_id == job.id, Checkpoint.step == step)
        ).first()
        if row is None:
            raise _unknown(name)
        return Target(name, job.model, job.task, "checkpoint", row.storage_key)
    if job.status != "succeeded" or not job.result_files:
        raise NotServable(409, f"The fine-tuning job {job.id} has not succeeded (status {job.status!r}).")
    delta = session.get(File, job.result_files[0])
    if delta is None:
        raise NotServable(409, f"The delta of {name!r} was deleted; it cannot be served.")
    return Target(name, job.model, job.task, "delta", delta.storage_key)
