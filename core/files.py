"""File rows and their bytes in the artifact store (uploads and job results)."""

from __future__ import annotations

import contextlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from sqlalchemy import Text, and_, cast, or_, select
from sqlalchemy.orm import Session

from core.ids import new_id
from core.models import File, Job
from core.storage import Storage
from rules.states import JobStatus

Lock = Literal["share", "update"] | None


def stage_file(
    storage: Storage,
    *,
    tenant_id: str,
    local: Path,
    filename: str,
    purpose: str,
    report: dict[str, Any] | None = None,
) -> File:
    """Store `local` under a generated key; the row comes back unsaved, for the caller to commit with the
    rest of its unit of work (or to `discard` if that fails). The user's filename is only metadata."""
    file_id = new_id("file")
    key = f"files/{file_id}"
    storage.put_file(local, key)
    return File(
        id=file_id,
        tenant_id=tenant_id,
        filename=filename[:255],
        bytes=local.stat().st_size,
        purpose=purpose,
        status="processed",
        report=report,
        storage_key=key,
    )


def discard(storage: Storage, rows: list[File]) -> None:
    """Remove the bytes of staged rows whose unit of work failed (best effort: it is already failing)."""
    for row in rows:
        with contextlib.suppress(Exception):
            storage.delete(row.storage_key)


def create_file(session: Session, storage: Storage, **fields: Any) -> File:
    """`stage_file`, recorded at once."""
    row = stage_file(storage, **fields)
    session.add(row)
    session.commit()
    return row


def get_file(session: Session, tenant_id: str, file_id: str, *, lock: Lock = None) -> File | None:
    """The tenant's file, or None (also for another tenant's id).

    `lock` holds the row until the transaction ends (PostgreSQL; SQLite's transactions are already
    serialised): "share" while a job that will use it is created, "update" while it is deleted, so a job
    created concurrently with the file's deletion either sees no file or makes the deletion see the job.
    """
    if lock is None:
        row = session.get(File, file_id)
    else:
        row = session.get(File, file_id, with_for_update={"read": lock == "share"})
    return row if row is not None and row.tenant_id == tenant_id else None


@dataclass(frozen=True)
class FileUse:
    """A job that needs a file: as its training or validation data (while the job is not finished), or as
    one of its results."""

    job_id: str
    status: str
    role: str  # "training_file" | "validation_file" | "result_files"


def uses_of(session: Session, row: File, limit: int = 5) -> list[FileUse]:
    """Up to `limit` jobs of the file's tenant that need it (one SELECT over that tenant's jobs; the result
    list is JSON, matched as text: ids are generated, `"<id>"` only matches the id itself)."""
    live = [status.value for status in JobStatus if not status.terminal]
    as_data = and_(Job.status.in_(live), or_(Job.training_file == row.id, Job.validation_file == row.id))
    as_result = cast(Job.result_files, Text).contains(f'"{row.id}"', autoescape=True)
    found = session.execute(
        select(Job.id, Job.status, Job.training_file, Job.validation_file)
        .where(Job.tenant_id == row.tenant_id, or_(as_data, as_result))
        .order_by(Job.created_at.desc(), Job.id.desc())
        .limit(limit)
    ).all()
    out = []
    for job_id, status, training, validation in found:
        live_job = status in live
        role = (
            "training_file"
            if live_job and training == row.id
            else "validation_file"
            if live_job and validation == row.id
            else "result_files"
        )
        out.append(FileUse(job_id, status, role))
    return out


def list_files(
    session: Session, tenant_id: str, *, purpose: str | None, after: str | None, limit: int
) -> tuple[list[File], bool]:
    """Newest first, cursor after a file id; returns (page, has_more)."""
    query = select(File).where(File.tenant_id == tenant_id)
    if purpose:
        query = query.where(File.purpose == purpose)
    if after:
        cursor = get_file(session, tenant_id, after)
        if cursor is not None:
            # `created_at <=` is an index range condition: the scan starts at the cursor instead of
            # filtering every newer row (a page deep in 10,000 jobs reads ~21 rows, not ~5,000).
            query = query.where(File.created_at <= cursor.created_at).where(
                (File.created_at < cursor.created_at) | (File.id < cursor.id)
            )
    rows = list(session.scalars(query.order_by(File.created_at.desc(), File.id.desc()).limit(limit + 1)))
    return rows[:limit], len(rows) > limit


def delete_file(session: Session, storage: Storage, row: File) -> None:
    """Remove the row and its bytes."""
    storage.delete(row.storage_key)
    session.delete(row)
    session.commit()
