"""Run the real service as subprocesses (`sgft serve|worker|reaper`, or `sgft run`) for integration tests."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import httpx

# Processes run from the logs folder (cwd) so that a developer's ./.env never leaks into a test stack.
T = TypeVar("T")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_for(check: Callable[[], T | None], timeout: float, what: str, interval: float = 0.5) -> T:
    """Poll `check` until it returns something truthy; fail naming `what` after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        value = check()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what}")
        time.sleep(interval)


@dataclass
class Stack:
    """A running service: environment, processes, logs, an API key and an HTTP client."""

    env: dict[str, str]
    logs: Path
    url: str = ""
    key: str = ""
    procs: dict[str, subprocess.Popen[bytes]] = field(default_factory=dict)

    def sgft(self, *args: str, check: bool = True) -> str:
        out = subprocess.run(
            [sys.executable, "-m", "cli.main", *args],
            env=self.env,
            cwd=self.logs,
            capture_output=True,
            timeout=120,
        )
        if check and out.returncode != 0:
            raise AssertionError(f"sgft {' '.join(args)} failed: {out.stderr.decode()[-2000:]}")
        return out.stdout.decode()

    def start(self, name: str, *args: str) -> subprocess.Popen[bytes]:
        log = (self.logs / f"{name}.log").open("ab")
        proc = subprocess.Popen(
            [sys.executable, "-m", "cli.main", *args],
            env=self.env,
            cwd=self.logs,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,  # its own process group: a kill reaches the Celery pool children too
        )
        self.procs[name] = proc
        return proc

    def kill(self, name: str, sig: int = signal.SIGKILL) -> None:
        proc = self.procs.pop(name)
        try:
            os.killpg(proc.pid, sig)
        except ProcessLookupError:
            pass
        proc.wait(timeout=30)

    def stop_all(self) -> None:
        for name in list(self.procs):
            self.kill(name)

    def tail(self, lines: int = 60) -> str:
        parts = []
        for log in sorted(self.logs.glob("*.log")):
            text = log.read_text(errors="replace").splitlines()[-lines:]
            parts.append(f"--- {log.name}\n" + "\n".join(text))
        return "\n".join(parts)

    def client(self) -> httpx.Client:
        return httpx.Client(base_url=self.url, headers={"Authorization": f"Bearer {self.key}"}, timeout=30)

    def wait_ready(self, timeout: float = 90) -> None:
        def ready() -> bool:
            try:
                return httpx.get(f"{self.url}/readyz", timeout=5).status_code == 200
            except httpx.HTTPError:
                return False

        try:
            wait_for(ready, timeout, "the API to be ready")
        except AssertionError:
            raise AssertionError(f"API not ready\n{self.tail()}") from None

    def job(self, job_id: str) -> dict[str, Any]:
        with self.client() as c:
            body: dict[str, Any] = c.get(f"/v1/fine_tuning/jobs/{job_id}").json()
            return body

    def events(self, job_id: str) -> list[dict[str, Any]]:
        with self.client() as c:
            data: list[dict[str, Any]] = c.get(
                f"/v1/fine_tuning/jobs/{job_id}/events", params={"order": "asc", "limit": 1000}
            ).json()["data"]
            return data

    def wait_status(self, job_id: str, statuses: set[str], timeout: float = 480) -> dict[str, Any]:
        def check() -> dict[str, Any] | None:
            job = self.job(job_id)
            if job["status"] in statuses:
                return job
            if job["status"] in {"failed", "cancelled", "succeeded"} - statuses:
                raise AssertionError(f"job ended {job['status']}: {job.get('error')}\n{self.tail()}")
            return None

        try:
            return wait_for(check, timeout, f"job {job_id} to reach {statuses}")
        except AssertionError as exc:
            raise AssertionError(f"{exc}\nlast state: {self.job(job_id)}\n{self.tail()}") from None


def serve_sqlite(tmp: Path, tenant: str, **env: str) -> Iterator[Stack]:
    """A real `sgft serve` on the embedded default (SQLite under `tmp/data`), migrated, with a key for
    `tenant` and the extra `SGFT_*` settings in `env`; stopped afterwards (use with `yield from`)."""
    (tmp / "logs").mkdir()
    port = free_port()
    clean = {k: v for k, v in os.environ.items() if not k.startswith("SGFT_")}
    clean.update({"SGFT_DATA_DIR": str(tmp / "data"), "SGFT_PORT": str(port), **env})
    stack = Stack(env=clean, logs=tmp / "logs", url=f"http://127.0.0.1:{port}")
    stack.sgft("migrate")
    stack.key = stack.sgft("keys", "create", "--tenant", tenant).strip()
    stack.start("api", "serve")
    try:
        stack.wait_ready()
        yield stack
    finally:
        stack.stop_all()
