"""Service test fixtures: scratch databases (SQLite file per test, one PostgreSQL database per session)."""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlalchemy import text
from sqlalchemy.orm import Session

from core.db import get_engine, get_sessionmaker
from core.models import Base
from tests.service.api_fixtures import api  # noqa: F401  (fixture)
from tests.service.helpers import PG_ADMIN, pg_admin_exec


@pytest.fixture(scope="session")
def pg_url() -> Iterator[str]:
    """A scratch PostgreSQL database for this test session (dropped at the end)."""
    name = f"sgft_test_{os.getpid()}_{uuid.uuid4().hex[:6]}"
    try:
        pg_admin_exec(f"CREATE DATABASE {name}")
    except Exception as exc:  # pragma: no cover - depends on the machine
        pytest.skip(f"PostgreSQL at 127.0.0.1:5432 unavailable: {exc}")
    url = PG_ADMIN.rsplit("/", 1)[0] + f"/{name}"
    yield url
    get_engine(url).dispose()
    get_engine.cache_clear()
    pg_admin_exec(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")


@pytest.fixture(scope="session")
def pg_schema(pg_url: str) -> str:
    Base.metadata.create_all(get_engine(pg_url))
    return pg_url


@pytest.fixture(params=["sqlite", "postgresql"])
def db_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    """An empty schema on SQLite (a fresh file) or PostgreSQL (truncated before the test)."""
    if request.param == "sqlite":
        url = f"sqlite:///{tmp_path / 'test.db'}"
        Base.metadata.create_all(get_engine(url))
        yield url
        get_engine(url).dispose()
        return
    url = request.getfixturevalue("pg_schema")
    tables = ", ".join(t.name for t in Base.metadata.sorted_tables)
    with get_engine(url).begin() as conn:
        conn.execute(text(f"TRUNCATE {tables} CASCADE"))
    yield url


@pytest.fixture
def session(db_url: str) -> Iterator[Session]:
    with get_sessionmaker(db_url)() as s:
        yield s
