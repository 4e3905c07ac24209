"""The compose deployment run by hand: the `command`s of docker-compose.yml's migrate, api, worker-cpu and
reaper services started as local processes against the local PostgreSQL (a scratch database) and Redis (a
spare database number), with the .env.example settings and local artifacts; a tiny LoRA job on an
SST-2 slice runs end to end and its result downloads. The API-image processes (migrate, api, reaper, keys)
run with only the packages of the `api` image importable (tests/deploy/image_env.py): no torch."""

from __future__ import annotations

import io
import json
import os
import re
import shlex
import signal
import socket
import subprocess
import tarfile
import time
import zipfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.deploy.image_env import api_image_pythonpath
from tests.deploy.project import SGFT, compose_yaml, dockerfile_stages, read_env_file

pytestmark = pytest.mark.integration

SST2 = Path(os.environ.get("SGFT_SST2_DIR", "/work/shared/data/sst2"))
PG = ("127.0.0.1", 5432)
REDIS = ("127.0.0.1", 6379)
REDIS_DB = 13  # a spare database number on the shared Redis


def _reachable(address: tuple[str, int]) -> bool:
    try:
        with socket.create_connection(address, timeout=2):
            return True
    except OSError:
        return False


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _head(path: Path, lines: int) -> bytes:
    with path.open("rb") as f:
        return b"".join(f.readline() for _ in range(lines))


@dataclass
class Deployment:
    """The scratch stores and the environments of the two images."""

    tmp: Path
    api_env: dict[str, str]
    worker_env: dict[str, str]
    base_url: str


@pytest.fixture
def deployment(tmp_path: Path) -> Iterator[Deployment]:
    """A scratch PostgreSQL database and Redis database, dropped and flushed afterwards."""
    if not (_reachable(PG) and _reachable(REDIS)):
        pytest.skip("needs PostgreSQL on 127.0.0.1:5432 and Redis on 127.0.0.1:6379")
    if not SST2.is_dir():
        pytest.skip(f"the SST-2 data is not at {SST2}")
    if not SGFT.is_file():
        pytest.skip(f"the sgft entry point is not installed at {SGFT}")
    import psycopg2
    import redis

    database = f"sgft_deploy_smoke_{os.getpid()}"
    admin = psycopg2.connect(host=PG[0], port=PG[1], user="postgres", dbname="test")
    admin.autocommit = True
    broker = redis.Redis(host=REDIS[0], port=REDIS[1], db=REDIS_DB)
    with admin.cursor() as cur:
        cur.execute(f'DROP DATABASE IF EXISTS "{database}" WITH (FORCE)')
        cur.execute(f'CREATE DATABASE "{database}"')
    broker.flushdb()

    values, _ = read_env_file()
    port = _free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("SGFT_")}
    env.update({k: v for k, v in values.items() if k.startswith("SGFT_")})
    env.update(
        SGFT_DATABASE_URL=f"postgresql+psycopg2://postgres@{PG[0]}:{PG[1]}/{database}",
        SGFT_BROKER_URL=f"redis://{REDIS[0]}:{REDIS[1]}/{REDIS_DB}",
        SGFT_ARTIFACTS_URL=(tmp_path / "artifacts").as_uri(),
        SGFT_DATA_DIR=str(tmp_path / "data"),
        SGFT_HOST="127.0.0.1",  # loopback only in tests (compose binds 0.0.0.0 inside the container)
        SGFT_PORT=str(port),
        SGFT_QUEUE_PREFIX=f"smoke{os.getpid()}-",  # queue names of its own on the shared Redis
        SGFT_REAPER_INTERVAL="2",
        HF_HUB_OFFLINE="1",
        TRANSFORMERS_OFFLINE="1",
    )
    api_env = {**env, "PYTHONPATH": api_image_pythonpath(tmp_path / "api-image-site")}
    try:
        yield Deployment(tmp_path, api_env, env, f"http://127.0.0.1:{port}")
    finally:
        broker.flushdb()
        with admin.cursor() as cur:
            cur.execute(f'DROP DATABASE IF EXISTS "{database}" WITH (FORCE)')
        admin.close()


def _command(service: str) -> list[str]:
    """The compose service's command with `sgft` resolved to this virtualenv's entry point."""
    command = list(compose_yaml()["services"][service]["command"])
    assert command[0] == "sgft", f"{service}: {command}"
    return [str(SGFT), *command[1:]]


class Processes:
    """Long-running services, each in its own process group (the worker forks a child per job)."""

    def __init__(self, tmp: Path) -> None:
        self.tmp = tmp
        self.running: dict[str, subprocess.Popen[bytes]] = {}

    def start(self, name: str, command: list[str], env: dict[str, str]) -> None:
        log = (self.tmp / f"{name}.log").open("wb")
        self.running[name] = subprocess.Popen(
            command, env=env, cwd=self.tmp, stdout=log, stderr=subprocess.STDOUT, start_new_session=True
        )

    def log(self, name: str) -> str:
        return (self.tmp / f"{name}.log").read_text(errors="replace")[-4000:]

    def logs(self) -> str:
        return "\n".join(f"----- {name} -----\n{self.log(name)}" for name in self.running)

    def check_alive(self) -> None:
        for name, proc in self.running.items():
            if proc.poll() is not None:
                pytest.fail(f"{name} exited with {proc.returncode}:\n{self.log(name)}")

    def stop(self) -> None:
        for proc in self.running.values():
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGTERM)
        deadline = time.monotonic() + 20
        for proc in self.running.values():
            try:
                proc.wait(timeout=max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait(timeout=10)


def _wait_for(what: str, check: Any, procs: Processes, timeout: float) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        procs.check_alive()
        result = check()
        if result:
            return result
        time.sleep(0.5)
    pytest.fail(f"timed out waiting for {what}\n{procs.logs()}")


def _healthz_ok(base_url: str) -> bool:
    try:
        return httpx.get(f"{base_url}/healthz", timeout=2).status_code == 200
    except httpx.HTTPError:
        return False


def _healthcheck(target: str) -> list[str]:
    """The HEALTHCHECK command of a Dockerfile stage (exec form)."""
    line = dockerfile_stages()[target].args("HEALTHCHECK")[-1]
    exec_form = line[line.index("CMD") + 3 :].strip()
    command: list[str] = json.loads(exec_form)
    return command


def _archive_names(content: bytes) -> set[str]:
    if zipfile.is_zipfile(io.BytesIO(content)):
        return {Path(n).name for n in zipfile.ZipFile(io.BytesIO(content)).namelist()}
    try:
        with tarfile.open(fileobj=io.BytesIO(content)) as tar:
            return {Path(n).name for n in tar.getnames()}
    except tarfile.TarError:
        return set()


def test_compose_services_run_a_job_end_to_end(deployment: Deployment) -> None:
    d = deployment
    migrate = subprocess.run(
        _command("migrate"), env=d.api_env, cwd=d.tmp, capture_output=True, text=True, timeout=120
    )
    assert migrate.returncode == 0, f"migrate failed:\n{migrate.stdout}\n{migrate.stderr}"

    procs = Processes(d.tmp)
    try:
        procs.start("api", _command("api"), d.api_env)
        procs.start("worker-cpu", _command("worker-cpu"), d.worker_env)
        procs.start("reaper", _command("reaper"), d.api_env)
        _wait_for("the API's /healthz", lambda: _healthz_ok(d.base_url), procs, 60)
        ready = httpx.get(f"{d.base_url}/readyz", timeout=10)
        assert ready.status_code == 200, f"/readyz: {ready.text}"
        # The api image's HEALTHCHECK, run as Docker would run it (inside the container's environment).
        api_env = {**d.api_env, "PATH": str(SGFT.parent)}
        probe = subprocess.run(_healthcheck("api"), env=api_env, capture_output=True, timeout=30)
        assert probe.returncode == 0, "the api HEALTHCHECK fails against a healthy API"

        keys = subprocess.run(
            [str(SGFT), "keys", "create", "--tenant", "smoke"],
            env=d.api_env,
            cwd=d.tmp,
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert keys.returncode == 0, keys.stderr
        found = re.search(r"sgft-[0-9a-f]+-[A-Za-z0-9_-]+", keys.stdout)
        assert found, f"no key in `sgft keys create` output: {keys.stdout!r}"
        client = httpx.Client(
            base_url=d.base_url, headers={"Authorization": f"Bearer {found.group(0)}"}, timeout=30
        )

        ids = {}
        for name, source, lines in (("train.jsonl", "train.jsonl", 32), ("valid.jsonl", "dev.jsonl", 16)):
            upload = client.post(
                "/v1/files",
                files={"file": (name, _head(SST2 / source, lines), "application/jsonl")},
                data={"purpose": "fine-tune"},
            )
            assert upload.status_code == 200, upload.text
            ids[name] = upload.json()["id"]

        # LoRA: the deployment path is the same for every method, and LoRA has no basis phase (SparseGrad's
        # eigendecompositions dominate a 2-step job on a busy 2-core machine) and a small delta.
        hyper = {"max_steps": 2, "batch_size": 8, "max_seq_length": 32, "eval_every": 2}
        created = client.post(
            "/v1/fine_tuning/jobs",
            json={
                "model": "all-MiniLM-L6-v2",
                "training_file": ids["train.jsonl"],
                "validation_file": ids["valid.jsonl"],
                "method": {"type": "lora", "lora": {"hyperparameters": hyper}},
                "seed": 0,
            },
        )
        assert created.status_code == 200, created.text
        job_id = created.json()["id"]

        def finished() -> dict[str, Any] | None:
            job: dict[str, Any] = client.get(f"/v1/fine_tuning/jobs/{job_id}").json()
            return job if job["status"] in ("succeeded", "failed", "cancelled") else None

        job = _wait_for(f"job {job_id} to finish", finished, procs, 180)
        assert job["status"] == "succeeded", f"job ended {job['status']}: {job.get('error')}\n{procs.logs()}"
        assert job["result_files"], "a succeeded job has result files"

        names: set[str] = set()
        for file_id in job["result_files"]:
            content = client.get(f"/v1/files/{file_id}/content")
            assert content.status_code == 200 and content.content, f"result {file_id} did not download"
            names |= _archive_names(content.content)
        assert {"adapter_config.json", "adapter_model.safetensors"} <= names, f"result files hold {names}"

        # The worker image's HEALTHCHECK (a Celery ping of this worker through the broker).
        check = _healthcheck("worker")
        worker_env = {**d.worker_env, "PATH": f"{SGFT.parent}:/usr/bin:/bin"}
        probe = subprocess.run(check, env=worker_env, cwd=d.tmp, capture_output=True, timeout=60)
        assert probe.returncode == 0, f"the worker HEALTHCHECK fails: {shlex.join(check)}\n{procs.logs()}"
    finally:
        procs.stop()
    # With the services gone, both health checks report unhealthy (they are not vacuous).
    assert subprocess.run(_healthcheck("api"), env=api_env, capture_output=True, timeout=30).returncode != 0
    probe = subprocess.run(check, env=worker_env, cwd=d.tmp, capture_output=True, timeout=60)
    assert probe.returncode != 0, "the worker HEALTHCHECK passes with no worker running"
