"""Shared helpers for service tests."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

PG_ADMIN = os.environ.get("SGFT_TEST_PG", "postgresql+psycopg2://postgres@127.0.0.1:5432/postgres")
SST2 = Path(os.environ.get("SGFT_SST2_DIR", "/work/shared/data/sst2"))


def sst2_lines(split: str, n: int) -> list[str]:
    """The first `n` lines of an SST-2 split (read at test time, never copied into the repo)."""
    path = SST2 / f"{split}.jsonl"
    if not path.exists():
        pytest.skip(f"{path} is missing")
    with path.open() as fh:
        return [next(fh) for _ in range(n)]


def pg_admin_exec(sql: str) -> None:
    """Run one statement on the PostgreSQL server outside a transaction (CREATE/DROP DATABASE)."""
    from sqlalchemy import create_engine, text

    engine = create_engine(PG_ADMIN, isolation_level="AUTOCOMMIT")
    with engine.connect() as conn:
        conn.execute(text(sql))
    engine.dispose()
