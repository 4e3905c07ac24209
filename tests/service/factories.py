"""Small factories for service tests."""

from __future__ import annotations

from sqlalchemy.orm import Session

from core import jobs
from core.ids import new_id
from core.keys import get_or_create_tenant
from core.models import File, Job


def make_job(session: Session, tenant: str = "acme", **overrides: object) -> Job:
    """A queued job row. The files it names get a row if they have none (no bytes are stored: the content is
    not checked at this level), as jobs.create_job refuses files that do not exist."""
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
    for file_id in (fields["training_file"], fields["validation_file"]):
        if file_id and session.get(File, file_id) is None:
            session.add(
                File(
                    id=file_id,
                    tenant_id=tenant_row.id,
                    filename=f"{file_id}.jsonl",
                    bytes=0,
                    purpose="fine-tune",
                    storage_key=f"files/{file_id}",
                )
            )
    session.commit()
    job, created = jobs.create_job(session, jobs.NewJob(**fields))  # type: ignore[arg-type]
    assert created
    return job
