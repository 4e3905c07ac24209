"""Small factories for service tests."""

from __future__ import annotations

from sqlalchemy.orm import Session

from core import jobs
from core.ids import new_id
from core.keys import get_or_create_tenant
from core.models import Job


def make_job(session: Session, tenant: str = "acme", **overrides: object) -> Job:
    """A queued job row (files are not checked at this level)."""
    tenant_row = get_or_create_tenant(session, tenant)
    session.commit()
    fields: dict[str, object] = {
        "tenant_id": tenant_row.id,
        "model": "all-MiniLM-L6-v2",
        "task": "classification",
        "method": {"type": "sparsegrad", "sparsegrad": {"hyperparameters": {}}},
        "hyperparameters": {},
        "seed": 1,
        "suffix": None,
        "metadata": None,
        "training_file": new_id("file"),
        "validation_file": None,
    }
    fields.update(overrides)
    job, created = jobs.create_job(session, jobs.NewJob(**fields))  # type: ignore[arg-type]
    assert created
    return job
