"""worker.reaper on a real database and kombu's in-memory broker: re-send lost messages, re-queue the dead."""

from __future__ import annotations

import json
import time
import uuid
from pathlib import Path

import pytest
from sqlalchemy import select, update
from sqlalchemy.orm import Session

from core import jobs, merges
from core.db import get_engine, get_sessionmaker
from core.models import Base, Job, JobEvent, now
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
    assert result == {"requeued": [dead.id], "resent": [lost.id], "merges_requeued": [], "merges_resent": []}
    assert sorted(_messages(settings)) == sorted([dead.id, lost.id])
    with factory() as s:
        assert s.get_one(Job, dead.id).status == "queued"
        assert s.get_one(Job, lost.id).enqueued_at is not None
    assert not any(reap_once(Settings(**{**settings.model_dump(), "queued_grace": 1000})).values())


def _succeeded(session: Session) -> str:
    job = make_job(session)
    session.execute(update(Job).where(Job.id == job.id).values(status="succeeded", result_files=["file-d"]))
    session.commit()
    return job.id


def test_merges_of_dead_workers_are_requeued_then_failed_and_lost_ones_resent(tmp_path: Path) -> None:
    settings = _settings(tmp_path)
    Base.metadata.create_all(get_engine(settings.database_url))
    factory = get_sessionmaker(settings.database_url)
    with factory() as s:
        dying, unsent = _succeeded(s), _succeeded(s)
        assert merges.request(s, dying) and merges.request(s, unsent)
        assert not merges.request(s, dying)  # already queued: a repeated POST changes nothing
        assert merges.claim(s, dying, "w-dead") is not None
        s.execute(update(Job).where(Job.id == dying).values(merge_heartbeat_at=now() - 60))
        s.commit()
    time.sleep(0.1)
    result = reap_once(settings)
    assert result["merges_requeued"] == [dying] and sorted(result["merges_resent"]) == sorted([dying, unsent])
    assert sorted(_messages(settings)) == sorted([f"{dying}", f"{unsent}"])
    for attempt in range(2, settings.max_attempts + 1):  # each attempt's worker dies too
        with factory() as s:
            claimed = merges.claim(s, dying, f"w-dead-{attempt}")
            assert claimed is not None and claimed.merge_attempts == attempt
            s.execute(update(Job).where(Job.id == dying).values(merge_heartbeat_at=now() - 60))
            s.commit()
        reap_once(settings)
    with factory() as s:
        job = s.get_one(Job, dying)
        assert job.merge_status == "failed" and job.merge_worker_id is None
        assert merges.request(s, dying)  # a failed merge can be asked for again
        assert (
            "max_attempts=3" in s.scalars(select(JobEvent.message).where(JobEvent.job_id == dying)).all()[-2]
        )


def test_a_merge_taken_from_its_worker_cannot_be_finished_by_it(tmp_path: Path) -> None:
    settings = _settings(tmp_path)
    Base.metadata.create_all(get_engine(settings.database_url))
    with get_sessionmaker(settings.database_url)() as s:
        job_id = _succeeded(s)
        merges.request(s, job_id)
        merges.claim(s, job_id, "w-old")
        s.execute(update(Job).where(Job.id == job_id).values(merge_heartbeat_at=now() - 60))
        s.commit()
        merges.requeue_stale(s, settings.heartbeat_timeout, settings.max_attempts)
        merges.claim(s, job_id, "w-new")
        with pytest.raises(jobs.LostOwnership):
            merges.succeed(s, job_id, "w-old", "file-stale")
        merges.succeed(s, job_id, "w-new", "file-merged")
        job = s.get_one(Job, job_id)
        assert job.merge_status == "succeeded" and job.result_files == ["file-d", "file-merged"]
