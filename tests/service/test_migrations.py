"""The Alembic migrations and the SQLAlchemy models agree, on SQLite and PostgreSQL."""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from sqlalchemy import create_engine, inspect

from core.models import Base
from migrations import upgrade
from tests.service.helpers import PG_ADMIN, pg_admin_exec


@pytest.fixture(params=["sqlite", "postgresql"])
def empty_db(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path / 'migrated.db'}"
        return
    name = f"sgft_mig_{os.getpid()}_{uuid.uuid4().hex[:6]}"
    try:
        pg_admin_exec(f"CREATE DATABASE {name}")
    except Exception as exc:
        pytest.skip(f"PostgreSQL unavailable: {exc}")
    yield PG_ADMIN.rsplit("/", 1)[0] + f"/{name}"
    pg_admin_exec(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")


def test_migrations_match_models(empty_db: str) -> None:
    upgrade(empty_db)
    engine = create_engine(empty_db)
    try:
        with engine.connect() as conn:
            diff = compare_metadata(MigrationContext.configure(conn), Base.metadata)
            tables = set(inspect(conn).get_table_names())
    finally:
        engine.dispose()
    assert diff == [], f"models and migrations differ: {diff}"
    assert {"jobs", "job_events", "files", "api_keys", "tenants", "checkpoints", "idempotency_keys"} <= tables
    upgrade(empty_db)  # idempotent: already at head
