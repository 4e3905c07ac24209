"""Private Redis and PostgreSQL servers for fault tests (restarted by the tests, never the shared ones).

Redis runs without persistence (`--save "" --appendonly no`), so a restart comes back empty like a lost
broker node. PostgreSQL is a throw-away cluster made with `initdb` (trust auth) in a temp folder owned by
the `postgres` OS user; it is stopped and started with `pg_ctl`.
"""

from __future__ import annotations

import glob
import os
import shutil
import socket
import subprocess
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path


def free_port() -> int:
    """A TCP port nobody listens on right now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _wait_port(port: int, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with socket.socket() as s:
            s.settimeout(0.5)
            if s.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.1)
    raise RuntimeError(f"{what} did not listen on port {port} within {timeout:.0f} s")


@dataclass
class RedisServer:
    """A non-persistent redis-server on its own port; `restart()` brings it back empty."""

    port: int = field(default_factory=free_port)
    proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> None:
        binary = shutil.which("redis-server")
        if binary is None:
            raise RuntimeError("redis-server is not installed")
        args = [binary, "--port", str(self.port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"]
        self.proc = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        _wait_port(self.port, 20, "redis-server")

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()  # SIGKILL: everything in memory is gone, like a crashed node
            self.proc.wait(timeout=10)
        self.proc = None

    def restart(self) -> None:
        self.stop()
        self.start()


def _pg_bin(name: str) -> str:
    found = shutil.which(name) or next(iter(sorted(glob.glob(f"/usr/lib/postgresql/*/bin/{name}"))), None)
    if found is None:
        raise RuntimeError(f"PostgreSQL's {name} is not installed")
    return found


@dataclass
class PostgresServer:
    """A private PostgreSQL cluster (trust auth, fsync off) run as the `postgres` OS user."""

    port: int = field(default_factory=free_port)
    root: Path | None = None

    @property
    def url(self) -> str:
        return f"postgresql+psycopg2://postgres@127.0.0.1:{self.port}/sgft"

    def _as_postgres(self, *args: str) -> subprocess.CompletedProcess[bytes]:
        cmd = list(args) if os.geteuid() != 0 else ["runuser", "-u", "postgres", "--", *args]
        out = subprocess.run(cmd, capture_output=True, timeout=120)
        if out.returncode != 0:
            raise RuntimeError(f"{' '.join(args[:2])} failed: {out.stderr.decode()[-1500:]}")
        return out

    def init(self) -> None:
        """initdb a fresh cluster, start it and create the `sgft` database."""
        self.root = Path(tempfile.mkdtemp(prefix="sgft-pg-"))
        if os.geteuid() == 0:
            shutil.chown(self.root, "postgres", "postgres")
        data = self.root / "data"
        self._as_postgres(_pg_bin("initdb"), "-D", str(data), "-A", "trust", "-U", "postgres", "--no-sync")
        self.start()
        self._as_postgres(
            _pg_bin("createdb"), "-h", "127.0.0.1", "-p", str(self.port), "-U", "postgres", "sgft"
        )

    def start(self) -> None:
        assert self.root is not None
        options = f"-p {self.port} -k {self.root} -c listen_addresses=127.0.0.1 -c fsync=off"
        log = str(self.root / "server.log")
        self._as_postgres(
            _pg_bin("pg_ctl"), "-D", str(self.root / "data"), "-o", options, "-l", log, "-w", "start"
        )

    def stop(self, mode: str = "immediate") -> None:
        """Stop the server; "immediate" drops every connection at once (a crash, as clients see it)."""
        assert self.root is not None
        self._as_postgres(_pg_bin("pg_ctl"), "-D", str(self.root / "data"), "-m", mode, "-w", "stop")

    def destroy(self) -> None:
        if self.root is None:
            return
        try:
            self.stop("fast")
        except RuntimeError:
            pass
        shutil.rmtree(self.root, ignore_errors=True)
        self.root = None
