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
import time
from pathlib import Path

import httpx

from bench.service_load import scratch_service


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
    port = int(os.environ.get("SGFT_BENCH_PORT", "8766"))
    with scratch_service("cpu", port, 1) as svc:
        api, ids = svc.api, svc.ids
        base = f"{svc.base}/v1/fine_tuning/jobs"
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


if __name__ == "__main__":
    main()
