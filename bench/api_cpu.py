"""API CPU per request of the hot read routes, from one sequential client (light: no load generator).

Same set-up as bench.service_load (scratch PostgreSQL database, 10,000 jobs, 2,000 events, the API as
`uvicorn api.app:create_app --factory`), but one API process (`--workers 1`) and one keep-alive client
sending SGFT_CPU_REQUESTS (default 2,000) requests per route one after the other; the figures are the
user+system CPU of the uvicorn process and of all `postgres` processes (from /proc) divided by the number
of requests, so other load on the machine changes the wall time but hardly the CPU (PostgreSQL's figure
also counts anything else the shared server did meanwhile). With SGFT_CPU_PROFILE=<dir>, `py-spy` (if on
PATH) samples the process during each route and writes its collapsed stacks there (`py-spy record --format
raw --gil`: the Python threads holding the GIL).

    .venv/bin/python -m bench.api_cpu
"""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
import time
import uuid
from pathlib import Path

import httpx

from bench.service_load import PG_ADMIN, REDIS, _admin, seed, start_api
from migrations import upgrade


def cpu_times(pid: int) -> tuple[float, float]:
    """(user, system) CPU seconds of process `pid`, all its threads, from /proc."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    tick = os.sysconf("SC_CLK_TCK")
    return int(fields[11]) / tick, int(fields[12]) / tick


def postgres_cpu() -> float:
    """User+system CPU seconds of every `postgres` process (server and backends; the server is local)."""
    total = 0.0
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            text = stat.read_text()
        except OSError:
            continue
        if text.split(" (", 1)[1].startswith("postgres)"):
            fields = text.rsplit(")", 1)[1].split()
            total += (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    return total


def measure(client: httpx.Client, url: str, headers: dict[str, str], n: int, pid: int) -> dict[str, float]:
    """API user and system CPU, PostgreSQL CPU and wall time, in ms per request, over `n` sequential GETs."""
    for _ in range(min(200, n)):  # warm-up: imports, pool connections, caches
        client.get(url, headers=headers).raise_for_status()
    (user, system), pg, wall = cpu_times(pid), postgres_cpu(), time.perf_counter()
    for _ in range(n):
        response = client.get(url, headers=headers)
        if response.status_code != 200:
            raise RuntimeError(f"{url}: {response.status_code} {response.text[:200]}")
    wall = time.perf_counter() - wall
    (user2, system2), pg2 = cpu_times(pid), postgres_cpu()
    return {
        "user": (user2 - user) * 1000 / n,
        "system": (system2 - system) * 1000 / n,
        "postgres": (pg2 - pg) * 1000 / n,
        "wall": wall * 1000 / n,
    }


def main() -> None:
    n = int(os.environ.get("SGFT_CPU_REQUESTS", "2000"))
    profile_dir = os.environ.get("SGFT_CPU_PROFILE")
    py_spy = shutil.which("py-spy") if profile_dir else None
    name = f"sgft_cpu_{os.getpid()}_{uuid.uuid4().hex[:6]}"
    url = PG_ADMIN.rsplit("/", 1)[0] + f"/{name}"
    secret = "bench-secret-key-0123456789"
    _admin(f"CREATE DATABASE {name}")
    api: subprocess.Popen[bytes] | None = None
    try:
        upgrade(url)
        with tempfile.TemporaryDirectory(prefix="sgft-cpu-") as tmp:
            data = Path(tmp)
            ids = seed(url, data, secret)
            port = int(os.environ.get("SGFT_BENCH_PORT", "8766"))
            env = {k: v for k, v in os.environ.items() if not k.startswith("SGFT_")}
            env.update(
                {
                    "SGFT_DATA_DIR": str(data),
                    "SGFT_DATABASE_URL": url,
                    "SGFT_BROKER_URL": REDIS,
                    "SGFT_QUEUE_PREFIX": f"cpu-{uuid.uuid4().hex[:8]}-",
                    "SGFT_SECRET_KEY": secret,
                    "SGFT_ARTIFACTS_URL": str(data / "artifacts"),
                }
            )
            api = start_api(env, port, 1, data / "api.log")
            base = f"http://127.0.0.1:{port}/v1/fine_tuning/jobs"
            routes = {
                "get_job": f"{base}/{ids['job']}",
                "list_jobs": f"{base}?limit=20",
                "list_jobs_after": f"{base}?limit=20&after={ids['mid_job']}",
                "events": f"{base}/{ids['job']}/events?limit=20&after={ids['job']}-1000",
            }
            headers = {"Authorization": f"Bearer {ids['key']}"}
            print(f"loadavg {open('/proc/loadavg').read().strip()}")
            with httpx.Client() as client:
                for label, target in routes.items():
                    spy = None
                    if py_spy and profile_dir:
                        out = Path(profile_dir) / f"{label}.txt"
                        cmd = [py_spy, "record", "-p", str(api.pid), "-r", "200", "--format", "raw", "--gil"]
                        spy = subprocess.Popen(
                            [*cmd, "-o", str(out), "--nonblocking"],
                            stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL,
                        )
                        time.sleep(1.0)
                    ms = measure(client, target, headers, n, api.pid)
                    if spy is not None:
                        spy.send_signal(2)  # SIGINT: py-spy writes its output and exits
                        spy.wait(timeout=60)
                    print(
                        f"{label:16s} API CPU {ms['user'] + ms['system']:.2f} ms/req (user {ms['user']:.2f}, "
                        f"system {ms['system']:.2f}); PostgreSQL CPU {ms['postgres']:.2f} ms/req; "
                        f"wall {ms['wall']:.2f} ms/req",
                        flush=True,
                    )
            print(f"loadavg {open('/proc/loadavg').read().strip()}")
    finally:
        if api is not None:
            subprocess.run(["kill", "--", f"-{api.pid}"], check=False)
            api.wait(timeout=30)
        from core.db import get_engine

        get_engine(url).dispose()
        _admin(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")


if __name__ == "__main__":
    main()
