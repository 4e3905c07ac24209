"""Shared fixtures: the API on SQLite with two tenants (tests/service), and the same on PostgreSQL."""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from api.app import create_app
from core.db import get_engine, get_sessionmaker
from core.keys import create_key
from core.models import Base
from tests.service.api_fixtures import (
    Api,
    api,  # noqa: F401  (fixture)
    make_settings,
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
        settings = make_settings(tmp_path, database_url=url)
        Base.metadata.create_all(get_engine(url))
        with get_sessionmaker(url)() as s:
            _, key_a = create_key(s, "tenant-a", settings.secret_key)
            _, key_b = create_key(s, "tenant-b", settings.secret_key)
        with TestClient(create_app(settings)) as client:
            yield Api(client, settings, key_a, key_b)
    finally:
        get_engine(url).dispose()
        pg_admin_exec(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")
