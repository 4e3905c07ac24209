"""A service stack for fault tests: real `sgft serve|worker|reaper` processes on a private PostgreSQL and a
private Redis, a tiny random BERT model, and the invariants every fault test ends with."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path
from typing import Any

from sqlalchemy import select

from core.db import get_engine, get_sessionmaker
from core.models import File, Job
from tests.service.stack import Stack, wait_for

INJECT = Path(__file__).parent / "inject"
MODEL = "tiny-bert"
TERMINAL = {"succeeded", "failed", "cancelled"}


class FaultStack(Stack):
    """`Stack` whose worker processes load the fault-injection `sitecustomize` (tests/hardening/inject)."""

    worker_env: dict[str, str]

    def __init__(self, env: dict[str, str], logs: Path, url: str, worker_env: dict[str, str]) -> None:
        super().__init__(env=env, logs=logs, url=url)
        self.worker_env = worker_env

    def start(self, name: str, *args: str) -> subprocess.Popen[bytes]:
        if not name.startswith("worker"):
            return super().start(name, *args)
        saved = self.env
        self.env = {**saved, **self.worker_env, "PYTHONPATH": str(INJECT)}
        try:
            return super().start(name, *args)
        finally:
            self.env = saved

    @property
    def db_url(self) -> str:
        return self.env["SGFT_DATABASE_URL"]

    def row(self, job_id: str) -> Job:
        """The job's database row (fresh read)."""
        with get_sessionmaker(self.db_url)() as s:
            return s.get_one(Job, job_id)

    def worker_running(self, job_id: str) -> str | None:
        """Name of the worker process whose pool child holds the job now (None if no live owner)."""
        job = self.row(job_id)
        if job.status != "running" or not job.worker_id:
            return None
        pid = int(job.worker_id.split(":")[1])
        try:
            group = os.getpgid(pid)
        except ProcessLookupError:
            return None
        return next((name for name, p in self.procs.items() if p.pid == group), None)

    def upload(self, lines: list[str], name: str = "train.jsonl") -> str:
        with self.client() as c:
            response = c.post("/v1/files", files={"file": (name, "".join(lines).encode())})
        assert response.status_code == 200, response.text
        return str(response.json()["id"])

    def create(self, train: str, **hyper: Any) -> str:
        body = {"model": MODEL, "training_file": train, "hyperparameters": hyper}
        with self.client() as c:
            response = c.post("/v1/fine_tuning/jobs", json=body)
        assert response.status_code == 200, response.text
        return str(response.json()["id"])

    def wait_terminal(self, job_id: str, timeout: float = 120) -> dict[str, Any]:
        def done() -> dict[str, Any] | None:
            job = self.job(job_id)
            return job if job["status"] in TERMINAL else None

        try:
            return wait_for(done, timeout, f"job {job_id} to finish")
        except AssertionError as exc:
            raise AssertionError(f"{exc}\nlast state: {self.job(job_id)}\n{self.tail()}") from None

    def wait_checkpoint(self, job_id: str, above: int = 0, timeout: float = 90) -> int:
        """Wait until the running job has a checkpoint past step `above`; returns its step."""

        def ready() -> int | None:
            job = self.row(job_id)
            step = job.checkpoint_step or 0
            return step if job.status == "running" and step > above and self.worker_running(job_id) else None

        try:
            return wait_for(ready, timeout, f"a checkpoint of {job_id} past step {above}", interval=0.1)
        except AssertionError as exc:
            raise AssertionError(f"{exc}\nlast state: {self.job(job_id)}\n{self.tail()}") from None

    def assert_final(self, expected: dict[str, str]) -> None:
        """Every job is in its expected terminal state; a succeeded job ran to completion exactly once and
        has exactly one set of results (a delta and a metrics file); a failed one has none."""
        for job_id, status in expected.items():
            job = self.job(job_id)
            assert job["status"] == status, f"{job_id}: {job['status']} {job.get('error')}\n{self.tail()}"
            messages = [e["message"] for e in self.events(job_id)]
            finished = [m for m in messages if m.startswith("Training finished at step")]
            completed = [m for m in messages if m == "The job has successfully completed"]
            with get_sessionmaker(self.db_url)() as s:
                results = s.scalars(
                    select(File.id).where(
                        File.purpose == "fine-tune-results", File.filename.like(f"{job_id}-%")
                    )
                ).all()
            if status == "succeeded":
                assert len(finished) == 1 and len(completed) == 1, messages
                assert sorted(results) == sorted(job["result_files"]) and len(results) == 2, (results, job)
            else:
                assert not completed and not job["result_files"] and not results, (messages, results)

    def dispose(self) -> None:
        get_engine(self.db_url).dispose()
