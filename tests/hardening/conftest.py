"""Shared fixtures: the API on SQLite with two tenants (tests/service), and the same on PostgreSQL."""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.service.api_fixtures import (
    Api,
    api,  # noqa: F401  (fixture)
    running_api,
)
from tests.service.helpers import PG_ADMIN, pg_admin_exec


@pytest.fixture
def pg_api(tmp_path: Path) -> Iterator[Api]:
    """The app on a scratch PostgreSQL database (dropped after the test)."""
    name = f"sgft_input_{os.getpid()}_{uuid.uuid4().hex[:6]}"
    try:
        pg_admin_exec(f"CREATE DATABASE {name}")
    except Exception as exc:  # pragma: no cover - depends on the machine
        pytest.skip(f"PostgreSQL unavailable: {exc}")
    url = PG_ADMIN.rsplit("/", 1)[0] + f"/{name}"
    try:
        yield from running_api(tmp_path, database_url=url)
    finally:
        pg_admin_exec(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")
