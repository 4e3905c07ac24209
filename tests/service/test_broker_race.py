"""The embedded broker (kombu's SQLAlchemy transport on SQLite) when another process creates the same queue
row or tables at the same moment: the publish still lands, and the consumer still receives it.

The other process is a second SQLite connection that writes at the exact point where the race opens: just
before this process's own INSERT INTO kombu_queue (or CREATE TABLE), after its lookup found nothing. That is
what happened when `sgft serve` published its first job while `sgft worker` was starting on a fresh broker.db
(tests/inference/test_service_inference.py: the job stayed queued, the worker never received it)."""

from __future__ import annotations

import base64
import json
import sqlite3
from collections.abc import Callable, Iterator
from pathlib import Path
from queue import Empty
from typing import Any

import pytest
from kombu import Exchange, Queue
from sqlalchemy import event
from sqlalchemy.engine import Engine

from core.queue import producer, send_run
from core.settings import Settings

Interleave = Callable[[str, list[str]], "OtherProcess"]
QUEUE_DDL = (
    "CREATE TABLE kombu_queue (id INTEGER NOT NULL PRIMARY KEY AUTOINCREMENT, name VARCHAR(200), "
    "UNIQUE (name))"
)


class OtherProcess:
    """Commits `writes` through its own SQLite connection, once, just before this process's first statement
    on `db` that starts with `before`."""

    def __init__(self, db: Path, before: str, writes: list[str]) -> None:
        self.db, self.before, self.writes, self.done = db, before.upper(), writes, False

    def __call__(self, conn: Any, _cursor: Any, statement: str, *_args: Any) -> None:
        if self.done or conn.engine.url.database != str(self.db):
            return
        if not " ".join(statement.split()).upper().startswith(self.before):
            return
        self.done = True
        other = sqlite3.connect(self.db, timeout=30)
        try:
            for sql in self.writes:
                other.execute(sql)
            other.commit()
        finally:
            other.close()


@pytest.fixture
def settings(tmp_path: Path) -> Settings:
    return Settings(data_dir=tmp_path)  # the embedded default: sqla+sqlite:///<tmp>/broker.db


@pytest.fixture
def interleave(settings: Settings) -> Iterator[Interleave]:
    hooks: list[OtherProcess] = []

    def attach(before: str, writes: list[str]) -> OtherProcess:
        hook = OtherProcess(settings.data_dir / "broker.db", before, writes)
        event.listen(Engine, "before_cursor_execute", hook)  # every engine, the ones kombu makes later too
        hooks.append(hook)
        return hook

    yield attach
    for hook in hooks:
        event.remove(Engine, "before_cursor_execute", hook)


def _job_id(message: dict[str, Any]) -> str:
    return str(json.loads(base64.b64decode(message["body"]))[0][0])


def _received(settings: Settings, queue: str) -> list[str]:
    """Job ids a fresh consumer takes from `queue` (declare, bind, poll: what `sgft worker` does)."""
    ids = []
    with producer(settings).connection_for_read() as conn:
        channel = conn.channel()
        Queue(queue, Exchange(queue), queue)(channel).declare()
        while True:
            try:
                ids.append(_job_id(channel._get(queue)))
            except Empty:
                return ids


def _create_tables(settings: Settings) -> None:
    with producer(settings).connection_for_write() as conn:
        conn.default_channel._open()  # kombu's create_all: the tables exist, no queue row yet


def test_the_api_publish_lands_when_a_worker_creates_the_queue_row_at_the_same_moment(
    settings: Settings, interleave: Interleave
) -> None:
    _create_tables(settings)
    hook = interleave("INSERT INTO kombu_queue", ["INSERT INTO kombu_queue (name) VALUES ('cpu')"])
    send_run("job-1", "cpu", settings)  # the API's first publish: it found no row, the worker inserts one
    assert hook.done, "the race point was not reached: the test no longer exercises the race"
    assert _received(settings, "cpu") == ["job-1"]
    send_run("job-2", "cpu", settings)  # the API's pooled channel is still usable afterwards
    assert _received(settings, "cpu") == ["job-2"]


def test_a_starting_worker_receives_when_the_api_creates_the_queue_row_at_the_same_moment(
    settings: Settings, interleave: Interleave
) -> None:
    _create_tables(settings)
    hook = interleave("INSERT INTO kombu_queue", ["INSERT INTO kombu_queue (name) VALUES ('cpu')"])
    with producer(settings).connection_for_read() as conn:
        channel = conn.channel()
        Queue("cpu", Exchange("cpu"), "cpu")(channel).declare()  # the worker declaring its queue at start
        assert hook.done
        send_run("job-1", "cpu", settings)  # the API publishes into the row it created
        assert _job_id(channel._get("cpu")) == "job-1"  # the worker's poll, on the same session


def test_the_api_publish_lands_when_a_worker_creates_the_broker_tables_at_the_same_moment(
    settings: Settings, interleave: Interleave
) -> None:
    hook = interleave("CREATE TABLE kombu_queue", [QUEUE_DDL])  # fresh broker.db: both run create_all
    send_run("job-1", "cpu", settings)
    assert hook.done
    assert _received(settings, "cpu") == ["job-1"]
