"""worker.runner without training: duplicates are no-ops, input problems fail the job with a clear error."""

from __future__ import annotations

from pathlib import Path

from core import jobs, queries
from core.db import get_engine, get_sessionmaker
from core.models import Base
from core.settings import Settings
from tests.service.factories import make_job
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
    run_job(job.id, settings)
    with get_sessionmaker(settings.database_url)() as s:
        after = queries.get_job(s, job.tenant_id, job.id)
        assert after is not None and after.status == "failed" and after.attempts == 1
        assert after.error_param == "training_file"
        assert "file-deleted was deleted" in (after.error_message or "")
    assert not list((tmp_path / "work").iterdir())  # scratch space cleaned up
