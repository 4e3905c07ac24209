"""worker.reaper on a real database and kombu's in-memory broker: re-send lost messages, re-queue the dead."""

from __future__ import annotations

import json
import time
import uuid
from pathlib import Path

from sqlalchemy import update

from core import jobs
from core.db import get_engine, get_sessionmaker
from core.models import Base, Job, now
from core.queue import producer
from core.settings import Settings
from tests.service.factories import make_job
from worker.reaper import reap_once


def _settings(tmp: Path) -> Settings:
    return Settings(
        data_dir=tmp,
        database_url=f"sqlite:///{tmp / 'r.db'}",
        broker_url="memory://",
        queue_prefix=f"r{uuid.uuid4().hex[:8]}-",
        queued_grace=0.05,
        heartbeat_timeout=30,
        max_attempts=3,
    )


def _messages(settings: Settings) -> list[str]:
    ids = []
    with producer(settings).connection_for_read() as conn:
        queue = conn.SimpleQueue(settings.queue_name("cpu"))
        while True:
            try:
                message = queue.get(timeout=0.2)
            except queue.Empty:
                return ids
            ids.append(json.loads(message.body)[0][0])
            message.ack()


def test_resends_lost_queued_and_requeues_stale(tmp_path: Path) -> None:
    settings = _settings(tmp_path)
    Base.metadata.create_all(get_engine(settings.database_url))
    factory = get_sessionmaker(settings.database_url)
    with factory() as s:
        lost = make_job(s)  # committed, but its message never reached the broker
        dead = make_job(s)
        jobs.claim(s, dead.id, "w-dead")
        s.execute(update(Job).where(Job.id == dead.id).values(heartbeat_at=now() - 60))
        s.commit()
    time.sleep(0.1)
    result = reap_once(settings)
    assert result == {"requeued": [dead.id], "resent": [lost.id]}
    assert sorted(_messages(settings)) == sorted([dead.id, lost.id])
    with factory() as s:
        assert s.get_one(Job, dead.id).status == "queued"
        assert s.get_one(Job, lost.id).enqueued_at is not None
    assert reap_once(Settings(**{**settings.model_dump(), "queued_grace": 1000})) == {
        "requeued": [],
        "resent": [],
    }
