"""Service load: requests/s and p50/p99 latency of the API on PostgreSQL at 1, 16 and 64 clients.

Set-up: a scratch database on the PostgreSQL at SGFT_BENCH_PG (default 127.0.0.1:5432, dropped at the end),
migrated; one tenant with 10,000 jobs (bulk-inserted through the core models) and one job with 2,000 events;
Redis DB 13 with a unique queue prefix as broker. The API runs as `uvicorn api.app:create_app --factory
--workers N` (N = SGFT_BENCH_API_WORKERS, default 2; access log off) — the same app `sgft serve` runs.
Load: `wrk` (C, keep-alive connections, 2 threads) for SGFT_BENCH_SECONDS (default 5) per cell, then a burst
of 500 creations from 64 asyncio+httpx clients checked against the broker queue. Prints a Markdown table and
writes bench/out/service_load.json.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
from sqlalchemy import create_engine, insert, text

from bench import wrk
from bench.load_burst import burst, queue_order
from core.files import create_file
from core.keys import create_key
from core.models import Job, JobEvent
from core.storage import Storage
from migrations import upgrade
from rules.datasets import validate_file

OUT = Path(__file__).parent / "out" / "service_load.json"
PG_ADMIN = os.environ.get("SGFT_BENCH_PG", "postgresql+psycopg2://postgres@127.0.0.1:5432/postgres")
REDIS = os.environ.get("SGFT_BENCH_REDIS", "redis://127.0.0.1:6379/13")
CLIENTS = (1, 16, 64)
N_JOBS, N_EVENTS, BURST = 10_000, 2_000, 500
SST2 = Path(os.environ.get("SGFT_SST2_DIR", "/work/shared/data/sst2")) / "train.jsonl"


def _admin(sql: str) -> None:
    engine = create_engine(PG_ADMIN, isolation_level="AUTOCOMMIT")
    with engine.connect() as conn:
        conn.execute(text(sql))
    engine.dispose()


def seed(url: str, data: Path, secret: str) -> dict[str, str]:
    """Tenant, key, a training file, 10,000 jobs and 2,000 events of one of them; returns the ids."""
    from core.db import get_sessionmaker

    with get_sessionmaker(url)() as s:
        key_row, key = create_key(s, "bench", secret)
        train = data / "train.jsonl"
        with SST2.open() as src:
            train.write_text("".join(next(src) for _ in range(64)))
        report = validate_file(train).to_dict()
        storage = Storage(str(data / "artifacts"))
        file_row = create_file(
            s,
            storage,
            tenant_id=key_row.tenant_id,
            local=train,
            filename="train.jsonl",
            purpose="fine-tune",
            report=report,
        )
        start = time.time() - N_JOBS
        method = {"type": "sparsegrad", "sparsegrad": {"hyperparameters": {}}}
        rows: list[dict[str, Any]] = [
            {
                "id": f"ftjob-{i:024x}",
                "tenant_id": key_row.tenant_id,
                "status": "running" if i % 7 else "succeeded",
                "model": "all-MiniLM-L6-v2",
                "task": "classification",
                "method": method,
                "hyperparameters": {"n_epochs": 3},
                "seed": 42,
                "training_file": file_row.id,
                "metrics": {"train_loss": 0.3, "step": i % 100},
                "result_files": [],
                "step": i % 100,
                "total_steps": 100,
                "created_at": start + i,
                "event_seq": 0,
            }
            for i in range(N_JOBS)
        ]
        s.execute(insert(Job), rows)
        polled = str(rows[N_JOBS // 2]["id"])
        events = [
            {
                "job_id": polled,
                "seq": n,
                "created_at": start + n,
                "level": "info",
                "type": "metrics",
                "message": f"Step {n}/{N_EVENTS}",
                "data": {"step": n, "train_loss": 0.5},
            }
            for n in range(1, N_EVENTS + 1)
        ]
        s.execute(insert(JobEvent), events)
        s.execute(text("UPDATE jobs SET event_seq = :n WHERE id = :id"), {"n": N_EVENTS, "id": polled})
        s.commit()
        s.execute(text("ANALYZE"))
        s.commit()
    return {"key": key, "file": file_row.id, "job": polled, "mid_job": str(rows[N_JOBS // 2 + 17]["id"])}


def start_api(env: dict[str, str], port: int, workers: int, logs: Path) -> subprocess.Popen[bytes]:
    cmd = [sys.executable, "-m", "uvicorn", "api.app:create_app", "--factory", "--host", "127.0.0.1"]
    cmd += ["--port", str(port), "--workers", str(workers), "--no-access-log", "--log-level", "warning"]
    proc = subprocess.Popen(
        cmd, env=env, stdout=logs.open("wb"), stderr=subprocess.STDOUT, start_new_session=True
    )
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        try:
            if httpx.get(f"http://127.0.0.1:{port}/healthz", timeout=2).status_code == 200:
                return proc
        except httpx.HTTPError:
            time.sleep(0.3)
    raise RuntimeError(f"API did not start:\n{logs.read_text()[-3000:]}")


@dataclass
class Scratch:
    """A running API on a scratch database (see `scratch_service`)."""

    url: str  # database URL
    prefix: str  # broker queue prefix
    ids: dict[str, str]  # what `seed` created
    api: subprocess.Popen[bytes]
    base: str  # http://127.0.0.1:PORT


@contextmanager
def scratch_service(
    tag: str, port: int, workers: int, extra_env: dict[str, str] | None = None
) -> Iterator[Scratch]:
    """A scratch PostgreSQL database (migrated, seeded) and the API on it; all removed on exit."""
    name = f"sgft_{tag}_{os.getpid()}_{uuid.uuid4().hex[:6]}"
    url = PG_ADMIN.rsplit("/", 1)[0] + f"/{name}"
    prefix = f"{tag}-{uuid.uuid4().hex[:8]}-"
    secret = "bench-secret-key-0123456789"
    _admin(f"CREATE DATABASE {name}")
    api: subprocess.Popen[bytes] | None = None
    try:
        upgrade(url)
        with tempfile.TemporaryDirectory(prefix=f"sgft-{tag}-") as tmp:
            data = Path(tmp)
            ids = seed(url, data, secret)
            env = {k: v for k, v in os.environ.items() if not k.startswith("SGFT_")}
            env.update(
                {
                    "SGFT_DATA_DIR": str(data),
                    "SGFT_DATABASE_URL": url,
                    "SGFT_BROKER_URL": REDIS,
                    "SGFT_QUEUE_PREFIX": prefix,
                    "SGFT_SECRET_KEY": secret,
                    "SGFT_ARTIFACTS_URL": str(data / "artifacts"),
                    **(extra_env or {}),
                }
            )
            api = start_api(env, port, workers, data / "api.log")
            yield Scratch(url, prefix, ids, api, f"http://127.0.0.1:{port}")
    finally:
        if api is not None:
            subprocess.run(["kill", "--", f"-{api.pid}"], check=False)
            api.wait(timeout=30)
        from core.db import get_engine

        get_engine(url).dispose()
        _admin(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")


def cpu_seconds(root: int) -> float:
    """User+system CPU of process `root` and its children (the uvicorn workers), from /proc."""
    tick = os.sysconf("SC_CLK_TCK")
    total = 0.0
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        pid, ppid = int(stat.parent.name), int(fields[1])
        if root in (pid, ppid):
            total += (int(fields[11]) + int(fields[12])) / tick  # utime, stime
    return total


def table(rows: list[dict[str, Any]]) -> str:
    lines = [
        "| endpoint | clients | req/s | p50 ms | p99 ms | API CPU ms/req | non-2xx |",
        "|---|---:|---:|---:|---:|---:|---:|",
    ]
    for r in rows:
        lines.append(
            f"| {r['endpoint']} | {r['clients']} | {r['requests_per_second']:.0f} | {r['p50_ms']:.1f} | "
            f"{r['p99_ms']:.1f} | {r['api_cpu_ms_per_request']:.2f} | {r['non_2xx'] + r['socket_errors']} |"
        )
    return "\n".join(lines)


def main() -> None:
    """Set up, measure every endpoint at 1/16/64 clients, run the 500-job burst, print and save."""
    if shutil.which("wrk") is None:
        print("service load: skipped, `wrk` is not installed (Debian: apt-get install -y wrk)", flush=True)
        return
    seconds = float(os.environ.get("SGFT_BENCH_SECONDS", "5"))
    workers = int(os.environ.get("SGFT_BENCH_API_WORKERS", "2"))
    port = int(os.environ.get("SGFT_BENCH_PORT", "8765"))
    with scratch_service("bench", port, workers, {"SGFT_JOB_RATE_LIMIT": "1000000"}) as svc:
        api, ids, base = svc.api, svc.ids, svc.base
        auth = {"Authorization": f"Bearer {ids['key']}"}
        create_body = json.dumps({"model": "all-MiniLM-L6-v2", "training_file": ids["file"]})
        cells = [
            ("GET job", f"{base}/v1/fine_tuning/jobs/{ids['job']}", "GET", None),
            ("list jobs (first page of 10,000)", f"{base}/v1/fine_tuning/jobs?limit=20", "GET", None),
            (
                "list jobs (after= mid-table)",
                f"{base}/v1/fine_tuning/jobs?limit=20&after={ids['mid_job']}",
                "GET",
                None,
            ),
            (
                "events page (2,000 events, after=)",
                f"{base}/v1/fine_tuning/jobs/{ids['job']}/events?limit=20&after={ids['job']}-1000",
                "GET",
                None,
            ),
            ("create job", f"{base}/v1/fine_tuning/jobs", "POST", create_body),
        ]
        load_before = os.getloadavg()
        results: list[dict[str, Any]] = []
        for label, target, method, body in cells:
            headers = {**auth, "Content-Type": "application/json"} if body else auth
            for clients in CLIENTS:
                cpu = cpu_seconds(api.pid)
                r = wrk.run(target, clients, seconds, headers, method, body).to_dict()
                r["api_cpu_ms_per_request"] = (cpu_seconds(api.pid) - cpu) * 1000 / max(r["requests"], 1)
                results.append({"endpoint": label, **r})
                print(
                    f"  {label} @ {clients}: {r['requests_per_second']:.0f} req/s, p99 {r['p99_ms']:.1f} ms",
                    flush=True,
                )
        burst_result = burst(base, auth, create_body, BURST, 64)
        order = queue_order(REDIS, f"{svc.prefix}cpu", burst_result["ids_by_client"], svc.url)
        load_after = os.getloadavg()
    summary: dict[str, Any] = {
        "config": {
            "api": f"uvicorn api.app:create_app --factory --workers {workers} (no access log)",
            "database": "PostgreSQL 127.0.0.1:5432 (scratch database)",
            "broker": REDIS,
            "load_tool": "wrk 4.1, 2 threads, keep-alive",
            "seconds_per_cell": seconds,
            "jobs_in_table": N_JOBS,
            "events_of_job": N_EVENTS,
            "cpus": os.cpu_count(),
            "loadavg_before": load_before,
            "loadavg_after": load_after,
            "note": "wrk and PostgreSQL share the machine with the API; the load averages show other work",
        },
        "results": results,
        "burst": {k: v for k, v in burst_result.items() if k != "ids_by_client"} | order,
    }
    print("\n" + table(results))
    b = summary["burst"]
    print(
        f"\nburst: {b['accepted']}/{b['sent']} accepted in {b['seconds']:.1f} s; {b['in_queue']} in the "
        f"broker queue, {b['duplicates']} duplicates, per-client order kept: {b['per_client_fifo']}, "
        f"all queued in the database: {b['all_queued_in_db']}"
    )
    OUT.parent.mkdir(parents=True, exist_ok=True)
    OUT.write_text(json.dumps(summary, indent=2))
    print(f"wrote {OUT}")


if __name__ == "__main__":
    main()
