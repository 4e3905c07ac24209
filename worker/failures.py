"""Turn an exception that ended a job into the job's `error` (code, message a person can act on, param).

Out-of-memory and a full disk are named as such wherever they happen (model set-up, basis, a step, saving
results), whatever wrapped them: a real CPU allocation failure surfaces from torch as a RuntimeError
("DefaultCPUAllocator: can't allocate memory"), not a MemoryError.
"""

from __future__ import annotations

import errno

from training.spec import OutOfMemory, TrainingError
from worker.redact import redact

OOM_MARKERS = ("can't allocate memory", "not enough memory", "out of memory")
FULL = (errno.ENOSPC, errno.EDQUOT)


def _chain(exc: BaseException) -> list[BaseException]:
    seen: list[BaseException] = []
    current: BaseException | None = exc
    while current is not None and current not in seen:
        seen.append(current)
        current = current.__cause__ or current.__context__
    return seen


def is_out_of_memory(exc: BaseException) -> bool:
    """A failed allocation anywhere in the exception chain."""
    for e in _chain(exc):
        if isinstance(e, MemoryError | OutOfMemory) or type(e).__name__ == "OutOfMemoryError":
            return True
        if isinstance(e, RuntimeError) and any(m in str(e).lower() for m in OOM_MARKERS):
            return True
    return False


def disk_full(exc: BaseException) -> OSError | None:
    """The ENOSPC / EDQUOT error in the chain, if any."""
    return next((e for e in _chain(exc) if isinstance(e, OSError) and e.errno in FULL), None)


def database_full(exc: BaseException) -> bool:
    """SQLite's SQLITE_FULL ("database or disk is full") in the chain: a full disk, not a database outage."""
    return any("database or disk is full" in str(e) for e in _chain(exc))


def describe(exc: BaseException, *hidden: str) -> tuple[str, str, str | None]:
    """(error code, message, param) for the job row, without server paths (worker.redact; `hidden`: roots
    such as the artifact store's, named only as "<artifact store>")."""
    code, message, param = _describe(exc)
    return code, redact(message, *hidden), param


def _describe(exc: BaseException) -> tuple[str, str, str | None]:
    if isinstance(exc, OutOfMemory):
        return exc.code, exc.message, exc.param
    if is_out_of_memory(exc):
        return (
            OutOfMemory.code,
            "The worker ran out of memory while training; lower batch_size or max_seq_length, raise "
            "gradient_accumulation_steps, or use a smaller model",
            None,
        )
    full = disk_full(exc)
    if full is not None:
        return (
            "storage_full",
            f"The worker could not save the job's files: {full.strerror or 'No space left on device'} on the "
            "artifact store or scratch disk. Free space (or raise the quota), then create the job again.",
            None,
        )
    if database_full(exc):
        return (
            "storage_full",
            "The service's database could not be written: its disk is full. Free space, then create the job "
            "again.",
            None,
        )
    if isinstance(exc, TrainingError):
        return exc.code, exc.message, exc.param
    return (
        "internal_error",
        f"The job failed unexpectedly ({type(exc).__name__}: {str(exc)[:300]}). This is likely a service "
        "bug, not your data; retry, and report the job id if it happens again.",
        None,
    )
