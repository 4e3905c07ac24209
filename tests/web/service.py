"""The real service for the browser and CLI tests: `sgft migrate`, `sgft keys create`, `sgft serve`,
`sgft worker` and `sgft infer` as separate processes on a temp SGFT_DATA_DIR (embedded SQLite database +
SQLite broker).

One instance per test session, shared by tests/web and tests/cli (`shared_service`).
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

import httpx

REPO = Path(__file__).resolve().parents[2]
SST2 = Path("/work/shared/data/sst2/train.jsonl")
SGFT = [sys.executable, "-m", "cli.main"]
# A tiny random BERT (real tokenizer) in the service's model registry: jobs take seconds on a busy CPU.
TINY_MODEL = "tiny-bert"
TINY_CHAT_MODEL = "tiny-llama"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def sst2_slice(target: Path, n: int, offset: int = 0) -> Path:
    """Write lines [offset, offset + n) of SST-2 train to `target` (read at test time, never copied)."""
    with SST2.open() as src, target.open("w") as out:
        for i, line in enumerate(src):
            if i >= offset + n:
                break
            if i >= offset:
                out.write(line)
    return target


@dataclass
class Service:
    """A running API + worker; `env` is what a client process needs (URL and key)."""

    data_dir: Path
    port: int
    api_key: str = ""
    infer_port: int = field(default_factory=lambda: free_port())
    procs: dict[str, subprocess.Popen[bytes]] = field(default_factory=dict)
    logs: dict[str, IO[bytes]] = field(default_factory=dict)

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def env(self) -> dict[str, str]:
        env = dict(os.environ)
        env.update(
            SGFT_DATA_DIR=str(self.data_dir),
            SGFT_HOST="127.0.0.1",
            SGFT_PORT=str(self.port),
            SGFT_INFER_PORT=str(self.infer_port),
            SGFT_API_URL=self.base_url,
            SGFT_API_KEY=self.api_key,
            SGFT_ENV="development",
            HF_HUB_OFFLINE="1",
            TOKENIZERS_PARALLELISM="false",
            PYTHONUNBUFFERED="1",
        )
        env.pop("SGFT_DATABASE_URL", None)
        env.pop("SGFT_BROKER_URL", None)
        env.pop("SGFT_ARTIFACTS_URL", None)
        return env

    def sgft(self, *args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
        """Run one `sgft` command to completion."""
        return subprocess.run(
            [*SGFT, *args], cwd=REPO, env=self.env, capture_output=True, text=True, timeout=timeout
        )

    def start(self) -> Service:
        from training.testing import make_tiny_model

        self.data_dir.mkdir(parents=True, exist_ok=True)
        make_tiny_model(self.data_dir / "models", TINY_MODEL, kind="bert")
        make_tiny_model(self.data_dir / "models", TINY_CHAT_MODEL, kind="llama")  # the playground's chat
        done = self.sgft("migrate")
        if done.returncode:
            raise RuntimeError(f"sgft migrate failed:\n{done.stdout}\n{done.stderr}")
        done = self.sgft("keys", "create", "--tenant", "web-tests")
        if done.returncode:
            raise RuntimeError(f"sgft keys create failed:\n{done.stderr}")
        self.api_key = done.stdout.strip().splitlines()[-1]
        servers = (("api", ["serve"]), ("worker", ["worker", "--concurrency", "1"]), ("infer", ["infer"]))
        for name, args in servers:
            log = (self.data_dir / f"{name}.log").open("wb")
            self.logs[name] = log
            # A new session: the worker's pool children are stopped together with it (by this group id).
            self.procs[name] = subprocess.Popen(
                [*SGFT, *args],
                cwd=REPO,
                env=self.env,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        self.wait_ready()
        return self

    def wait_ready(self, timeout: float = 90) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            for name, proc in self.procs.items():
                if proc.poll() is not None:
                    raise RuntimeError(f"sgft {name} exited ({proc.returncode}):\n{self.log_tail(name)}")
            try:
                if httpx.get(f"{self.base_url}/readyz", timeout=2).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            time.sleep(0.3)
        raise RuntimeError(f"the API did not become ready in {timeout}s:\n{self.log_tail('api')}")

    def log_tail(self, name: str, chars: int = 4000) -> str:
        path = self.data_dir / f"{name}.log"
        return path.read_text(errors="replace")[-chars:] if path.exists() else ""

    def stop(self) -> None:
        for name, proc in self.procs.items():
            if proc.poll() is None:
                # Celery's cold shutdown (SIGQUIT) ends a running job at once; uvicorn stops on SIGTERM.
                os.killpg(proc.pid, signal.SIGQUIT if name == "worker" else signal.SIGTERM)
        for proc in self.procs.values():
            try:
                proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()
        for log in self.logs.values():
            log.close()
        self.procs.clear()

    # A tiny API client for test set-up (the tests check behaviour through the page or the CLI).
    def api(self, method: str, path: str, **kwargs: Any) -> Any:
        headers = {"Authorization": f"Bearer {self.api_key}"}
        r = httpx.request(method, f"{self.base_url}{path}", headers=headers, timeout=60, **kwargs)
        if r.status_code >= 400:
            raise AssertionError(f"{method} {path} -> {r.status_code}: {r.text}")
        return r.json()

    def upload(self, path: Path) -> str:
        with path.open("rb") as fh:
            return str(
                self.api("POST", "/v1/files", files={"file": (path.name, fh)}, data={"purpose": "fine-tune"})[
                    "id"
                ]
            )

    def create_job(self, training_file: str, **hyperparameters: Any) -> dict[str, Any]:
        body = {
            "model": TINY_MODEL,
            "training_file": training_file,
            "method": {"type": "sparsegrad", "sparsegrad": {"hyperparameters": hyperparameters}},
        }
        job: dict[str, Any] = self.api("POST", "/v1/fine_tuning/jobs", json=body)
        return job

    def wait_job(self, job_id: str, statuses: set[str], timeout: float = 180) -> dict[str, Any]:
        deadline = time.monotonic() + timeout
        job: dict[str, Any] = {}
        while time.monotonic() < deadline:
            job = self.api("GET", f"/v1/fine_tuning/jobs/{job_id}")
            if job["status"] in statuses:
                return job
            time.sleep(0.5)
        raise AssertionError(
            f"job {job_id} stayed {job.get('status')} (wanted {statuses}):\n{self.log_tail('worker')}"
        )


_shared: Service | None = None


def shared_service(base: Path) -> Service:
    """Start the session's service on first use (under `base`), then hand out the same one."""
    global _shared
    if _shared is None:
        service = Service(data_dir=base, port=free_port())
        try:
            service.start()
        except BaseException:
            service.stop()
            raise
        _shared = service
    return _shared


def stop_shared() -> None:
    """Stop the session's service if it was started (idempotent)."""
    global _shared
    if _shared is not None:
        _shared.stop()
        _shared = None
