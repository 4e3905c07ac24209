"""worker.runner: duplicates are no-ops, input problems fail the job with a clear error, and what users read
of a job (events, errors) holds no server path."""

from __future__ import annotations

import re
import socket
import threading
import time
from pathlib import Path

from sqlalchemy import select

from core import jobs, queries
from core.db import get_engine, get_sessionmaker
from core.files import create_file
from core.models import Base, File, Job, JobEvent
from core.settings import Settings
from core.storage import Storage
from rules.datasets import validate_file
from tests.service.factories import make_job
from training.testing import make_tiny_model, sst2_lines
from worker.runner import run_job


def _settings(tmp: Path) -> Settings:
    settings = Settings(data_dir=tmp, database_url=f"sqlite:///{tmp / 'w.db'}", broker_url="memory://")
    Base.metadata.create_all(get_engine(settings.database_url))
    return settings


def test_not_queued_job_is_left_alone(tmp_path: Path) -> None:
    settings = _settings(tmp_path)
    with get_sessionmaker(settings.database_url)() as s:
        job = make_job(s)
        jobs.cancel(s, job)
    run_job(job.id, settings)  # e.g. a duplicate delivery after a cancel
    run_job("ftjob-doesnotexist", settings)
    with get_sessionmaker(settings.database_url)() as s:
        after = queries.get_job(s, job.tenant_id, job.id)
        assert after is not None and after.status == "cancelled" and after.attempts == 0


def test_missing_input_fails_with_clear_error(tmp_path: Path) -> None:
    settings = _settings(tmp_path)
    with get_sessionmaker(settings.database_url)() as s:
        job = make_job(s, training_file="file-deleted")
        s.delete(s.get_one(File, "file-deleted"))  # deleted after the job was created
        s.commit()
    run_job(job.id, settings)
    with get_sessionmaker(settings.database_url)() as s:
        after = queries.get_job(s, job.tenant_id, job.id)
        assert after is not None and after.status == "failed" and after.attempts == 1
        assert after.error_param == "training_file"
        assert "file-deleted was deleted" in (after.error_message or "")
    assert not list((tmp_path / "work").iterdir())  # scratch space cleaned up


def _stored_dataset(settings: Settings, tenant_id: str, lines: list[str]) -> File:
    local = settings.data_dir / "upload.jsonl"
    local.write_text("".join(lines))
    with get_sessionmaker(settings.database_url)() as s:
        row = create_file(
            s,
            Storage(settings.artifacts_url),
            tenant_id=tenant_id,
            local=local,
            filename="train.jsonl",
            purpose="fine-tune",
            report=validate_file(local).to_dict(),
        )
    local.unlink()
    return row


def _messages(settings: Settings, job: Job) -> list[str]:
    with get_sessionmaker(settings.database_url)() as s:
        after = queries.get_job(s, job.tenant_id, job.id)
        events = s.scalars(select(JobEvent.message).where(JobEvent.job_id == job.id)).all()
    assert after is not None
    return [*events, after.error_message or ""]


def test_no_event_or_error_shows_a_server_path(tmp_path: Path) -> None:
    """A real job (tiny BERT) cancelled mid-run, and one whose input vanished from the artifact store (an
    internal error naming the file): no event or error message holds the data folder, its scratch or work
    folders, the host name, or any absolute path; checkpoints are named by their step."""
    settings = _settings(tmp_path)
    settings.checkpoint_every = 10_000
    make_tiny_model(settings.models_path, "tiny-bert")
    factory = get_sessionmaker(settings.database_url)
    with factory() as s:
        tenant_id = make_job(s).tenant_id  # the tenant; this first job is never run
    full = {"type": "full", "full": {"hyperparameters": {}}}
    dataset = _stored_dataset(settings, tenant_id, sst2_lines("train", 32))
    with factory() as s:
        long = make_job(s, model="tiny-bert", training_file=dataset.id, method=full,
                        hyperparameters={"n_epochs": 50, "max_steps": 5000, "batch_size": 1})  # fmt: skip
    runner = threading.Thread(target=run_job, args=(long.id, settings))
    runner.start()
    deadline = time.monotonic() + 240
    while (step := _step(settings, long)) < 2 and runner.is_alive() and time.monotonic() < deadline:
        time.sleep(0.2)
    with factory() as s:
        assert jobs.cancel(s, s.get_one(Job, long.id)).stop_request == "cancel", "it was running"
    runner.join(240)
    assert not runner.is_alive() and step >= 2
    cancelled = _messages(settings, long)
    stopped = [m for m in cancelled if m.startswith("Stopped (cancelled) at step")]
    saved = f"; checkpoint saved at step {_step(settings, long)}"
    assert len(stopped) == 1 and stopped[0].endswith(saved), cancelled[-6:]

    gone = _stored_dataset(settings, tenant_id, sst2_lines("train", 8))
    (Path(settings.artifacts_url) / gone.storage_key).unlink()  # the stored upload vanished
    with factory() as s:
        broken = make_job(s, model="tiny-bert", training_file=gone.id, method=full)
    run_job(broken.id, settings)
    failed = _messages(settings, broken)
    assert f"FileNotFoundError: <artifact store>/{gone.storage_key})" in failed[-1], failed[-1]

    for message in cancelled + failed:
        assert str(tmp_path) not in message and socket.gethostname() not in message, message
        assert not re.search(r"(^|[\s'\"(])/\w+/", message), message  # no absolute path at all


def _step(settings: Settings, job: Job) -> int:
    with get_sessionmaker(settings.database_url)() as s:
        return s.get_one(Job, job.id).step
