"""Fixtures for API tests: an app on a fresh SQLite file, kombu's in-memory broker, two tenants."""

from __future__ import annotations

import io
import json
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient
from sqlalchemy.orm import Session

from api.app import create_app
from core.db import get_engine, get_sessionmaker
from core.keys import create_key
from core.models import Base
from core.settings import Settings
from tests.service.helpers import sst2_lines


@dataclass
class Api:
    client: TestClient
    settings: Settings
    key_a: str
    key_b: str

    def h(self, key: str | None = None) -> dict[str, str]:
        return {"Authorization": f"Bearer {key or self.key_a}"}

    def upload(self, content: bytes, name: str = "train.jsonl", key: str | None = None) -> Any:
        files = {"file": (name, io.BytesIO(content), "application/jsonl")}
        return self.client.post("/v1/files", headers=self.h(key), files=files, data={"purpose": "fine-tune"})

    def upload_ok(self, content: bytes, name: str = "train.jsonl", key: str | None = None) -> str:
        response = self.upload(content, name, key)
        assert response.status_code == 200, response.text
        return str(response.json()["id"])

    def session(self) -> Session:
        return get_sessionmaker(self.settings.database_url)()


def make_settings(tmp: Path, **overrides: Any) -> Settings:
    values: dict[str, Any] = {
        "data_dir": tmp,
        "database_url": f"sqlite:///{tmp / 'api.db'}",
        "broker_url": "memory://",
        "queue_prefix": f"t{uuid.uuid4().hex[:8]}-",
        "max_upload_bytes": 200_000,
    }
    values.update(overrides)
    return Settings(**values)


def running_api(tmp: Path, tenant_b: str = "tenant-b", **overrides: Any) -> Iterator[Api]:
    """The app for `make_settings(tmp, **overrides)` with its tables and a key each for "tenant-a" and
    `tenant_b` (use with `yield from` in a fixture); its engine is disposed afterwards."""
    settings = make_settings(tmp, **overrides)
    Base.metadata.create_all(get_engine(settings.database_url))
    with get_sessionmaker(settings.database_url)() as s:
        _, key_a = create_key(s, "tenant-a", settings.secret_key)
        _, key_b = create_key(s, tenant_b, settings.secret_key)
    try:
        with TestClient(create_app(settings)) as client:
            yield Api(client, settings, key_a, key_b)
    finally:
        get_engine(settings.database_url).dispose()


@pytest.fixture
def api(tmp_path: Path) -> Iterator[Api]:
    yield from running_api(tmp_path)


def sst2_bytes(split: str = "train", n: int = 16) -> bytes:
    return "".join(sst2_lines(split, n)).encode()


CHAT = (
    "\n".join(
        json.dumps(
            {"messages": [{"role": "user", "content": f"hi {i}"}, {"role": "assistant", "content": "yo"}]}
        )
        for i in range(4)
    )
    + "\n"
).encode()
