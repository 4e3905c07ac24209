"""/v1/files: upload (streamed to disk with a size cap, validated before the response), list, get, content."""

from __future__ import annotations

import contextlib
import re
import time
import uuid
from collections.abc import Iterator
from pathlib import Path, PurePosixPath, PureWindowsPath
from typing import Annotated, BinaryIO
from urllib.parse import quote

from fastapi import APIRouter, Form, Query, Request, UploadFile
from fastapi.responses import StreamingResponse
from starlette.concurrency import run_in_threadpool

from api.deps import KeyDep, SessionDep, SettingsDep, StorageDep
from api.errors import APIError, error_responses, not_found
from api.schemas import FileDeleted, FilePublic, ListPage
from core import files as file_store
from rules.datasets import not_jsonl, validate_lines

router = APIRouter(prefix="/v1/files", tags=["files"], responses=error_responses(400, 401, 503))
CHUNK = 1 << 20
UPLOAD_TMP_TTL = 3600.0  # seconds since its last write before a spooled upload counts as abandoned


def _clean_name(name: str | None) -> str:
    """The base name only (never used as a path), printable, at most 255 characters."""
    base = PureWindowsPath(PurePosixPath(name or "upload.jsonl").name).name
    return re.sub(r"[^\w.\- ]", "_", base)[:255] or "upload.jsonl"


def sweep_uploads(tmp_dir: Path, older_than: float = UPLOAD_TMP_TTL) -> int:
    """Remove spooled uploads left by an API process killed mid-upload (at start-up). Only old ones: another
    API process on this data folder may be receiving one now, and a live upload's file keeps changing."""
    cutoff = time.time() - older_than
    removed = 0
    for path in tmp_dir.glob("upload-*"):
        with contextlib.suppress(FileNotFoundError):
            if path.stat().st_mtime < cutoff:
                path.unlink()
                removed += 1
    return removed


def content_disposition(filename: str) -> str:
    """`attachment` with the name twice (RFC 6266): an ASCII fallback for old clients, and the exact name
    percent-encoded as UTF-8 (RFC 5987). A header is Latin-1 on the wire, so a raw "données.jsonl" or
    "中.jsonl" cannot go in it as is."""
    fallback = "".join(c if " " <= c <= "~" and c not in '"\\' else "_" for c in filename)
    return f"attachment; filename=\"{fallback}\"; filename*=UTF-8''{quote(filename, safe='')}"


def _declared_size(length: str | None) -> int | None:
    """Content-Length as a number when it is one (ASCII digits, not absurdly long); None otherwise."""
    if length is None or not (length.isascii() and length.isdigit()):
        return None
    return int(length) if len(length) <= 20 else 10**20


def _spool(upload: UploadFile, target: Path, cap: int) -> int:
    """Copy the upload to `target` in 1 MiB chunks, refusing more than `cap` bytes."""
    size = 0
    with target.open("wb") as out:
        while chunk := upload.file.read(CHUNK):
            size += len(chunk)
            if size > cap:
                raise APIError(
                    413, f"File is larger than the {cap} byte limit", param="file", code="file_too_large"
                )
            out.write(chunk)
    return size


def _capped_lines(fh: BinaryIO, filename: str, cap: int) -> Iterator[bytes]:
    """The file's lines, refusing one longer than `cap` bytes before reading it whole (api.linelimit
    refuses it while streaming already; this guards any other way in)."""
    number = 0
    while line := fh.readline(cap + 1):
        number += 1
        if len(line) > cap and not line.endswith(b"\n"):
            verdict = not_jsonl(line[:1024], filename) if number == 1 else None
            raise APIError(
                400,
                f"{filename}: {verdict}"
                if verdict
                else f"{filename}: line {number}: longer than the {cap} byte line limit",
                param="file",
                code="invalid_file",
            )
        yield line


@router.post("", response_model=FilePublic, responses=error_responses(413, 507))
async def upload_file(
    request: Request,
    key: KeyDep,
    session: SessionDep,
    settings: SettingsDep,
    storage: StorageDep,
    file: UploadFile,
    purpose: Annotated[str, Form()] = "fine-tune",
) -> FilePublic:
    """Upload a JSONL dataset (purpose "fine-tune"); malformed data is a 400 naming lines and problems."""
    length = _declared_size(request.headers.get("content-length"))
    if length is not None and length > settings.max_upload_bytes + 65536:
        raise APIError(413, f"File is larger than the {settings.max_upload_bytes} byte limit", param="file")
    if purpose != "fine-tune":
        raise APIError(400, f"purpose {purpose!r} is not supported; use 'fine-tune'", param="purpose")
    filename = _clean_name(file.filename)
    tmp_dir = settings.data_dir / "tmp"
    tmp_dir.mkdir(parents=True, exist_ok=True)
    tmp = tmp_dir / f"upload-{uuid.uuid4().hex}"
    try:
        await run_in_threadpool(_spool, file, tmp, settings.max_upload_bytes)

        def _validate() -> dict[str, object]:
            with tmp.open("rb") as fh:
                report = validate_lines(_capped_lines(fh, filename, settings.max_line_bytes), filename)
            if not report.ok:
                raise APIError(400, report.describe(), param="file", code="invalid_file")
            return report.to_dict()

        report = await run_in_threadpool(_validate)
        row = await run_in_threadpool(
            lambda: file_store.create_file(
                session,
                storage,
                tenant_id=key.tenant_id,
                local=tmp,
                filename=filename,
                purpose=purpose,
                report=report,
            )
        )
    finally:
        tmp.unlink(missing_ok=True)
    return FilePublic.of(row)


@router.get("", response_model=ListPage[FilePublic])
def list_files(
    key: KeyDep,
    session: SessionDep,
    purpose: str | None = None,
    after: str | None = None,
    limit: Annotated[int, Query(ge=1, le=10000)] = 100,
) -> ListPage[FilePublic]:
    """The tenant's files, newest first."""
    rows, more = file_store.list_files(session, key.tenant_id, purpose=purpose, after=after, limit=limit)
    data = [FilePublic.of(r) for r in rows]
    return ListPage(
        data=data, has_more=more, first_id=data[0].id if data else None, last_id=data[-1].id if data else None
    )


@router.get("/{file_id}", response_model=FilePublic, responses=error_responses(404))
def get_file(file_id: str, key: KeyDep, session: SessionDep) -> FilePublic:
    row = file_store.get_file(session, key.tenant_id, file_id)
    if row is None:
        raise not_found("file", file_id, "file_id")
    return FilePublic.of(row)


@router.get("/{file_id}/content", responses=error_responses(404))
def file_content(file_id: str, key: KeyDep, session: SessionDep, storage: StorageDep) -> StreamingResponse:
    """The file's bytes (uploads as JSONL; results as .tar.gz or .jsonl)."""
    row = file_store.get_file(session, key.tenant_id, file_id)
    if row is None:
        raise not_found("file", file_id, "file_id")

    def chunks() -> Iterator[bytes]:
        with storage.open(row.storage_key) as fh:
            while chunk := fh.read(CHUNK):
                yield chunk

    session.commit()  # no transaction stays open while the bytes stream
    media = "application/gzip" if row.filename.endswith(".tar.gz") else "application/octet-stream"
    headers = {
        "Content-Disposition": content_disposition(row.filename),
        "Content-Length": str(row.bytes),
    }
    return StreamingResponse(chunks(), media_type=media, headers=headers)


@router.delete("/{file_id}", response_model=FileDeleted, responses=error_responses(404, 409, 507))
def delete_file(file_id: str, key: KeyDep, session: SessionDep, storage: StorageDep) -> FileDeleted:
    # (No docstring: it would change the OpenAPI description.) A file a job still needs is a 409: the
    # data of a queued, running or paused job, or any job's result. The row stays locked from the check
    # to the delete, and job creation locks the rows of its files (core.files.get_file).
    row = file_store.get_file(session, key.tenant_id, file_id, lock="update")
    if row is None:
        raise not_found("file", file_id, "file_id")
    uses = file_store.uses_of(session, row)
    if uses:
        session.rollback()
        raise APIError(409, _in_use_message(file_id, uses), param="file_id", code="file_in_use")
    file_store.delete_file(session, storage, row)
    return FileDeleted(id=file_id)


def _in_use_message(file_id: str, uses: list[file_store.FileUse]) -> str:
    data = [u for u in uses if u.role != "result_files"]
    results = [u for u in uses if u.role == "result_files"]
    parts = [f"it is the {u.role} of {u.status} job {u.job_id}" for u in data]
    parts += [f"it is a result of job {u.job_id} (in its result_files)" for u in results]
    fixes = []
    if data:
        fixes.append("cancel the job or wait until it finishes")
    if results:
        fixes.append("a job's results stay while the job exists")
    fix = "; ".join(fixes)
    return f"File {file_id} is in use and cannot be deleted: {'; '.join(parts)}. {fix[0].upper()}{fix[1:]}."
