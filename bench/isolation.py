"""One tenant's big work against another's small requests, on the embedded default (SQLite, one API
process, the app `sgft serve` runs). Tenant A uploads a 20,000-line file of SST-2 text (each line 30
sentences), then asks for an estimate with a 20,000-line, 500-class training file and a validation file
holding every class, thirty times. Meanwhile /healthz is polled every 20 ms, and tenant B lists its files
and jobs and uploads a small file, one after another.
Prints each kind of request's p50 / p99 / worst time, and writes bench/out/isolation.json.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx

from bench.service_load import start_api

SST2 = Path(__file__).resolve().parents[2] / "shared" / "data" / "sst2" / "train.jsonl"
LINES = 20_000
SENTENCES = 30  # per line
ROUNDS = 30
OUT = Path(__file__).parent / "out"


def _sgft(env: dict[str, str], *args: str) -> str:
    run = subprocess.run([sys.executable, "-m", "cli.main", *args], env=env, capture_output=True, check=True)
    return run.stdout.decode().strip()


def _quantiles(seconds: list[float]) -> dict[str, float]:
    ms = sorted(s * 1000 for s in seconds)
    at = lambda q: ms[min(len(ms) - 1, int(q * len(ms)))]  # noqa: E731
    return {"n": len(ms), "p50_ms": at(0.5), "p99_ms": at(0.99), "max_ms": ms[-1]}


def _loop(
    stop: threading.Event, call: Callable[[], httpx.Response], pause: float
) -> tuple[list[float], set[int]]:
    times: list[float] = []
    codes: set[int] = set()
    while not stop.is_set():
        started = time.perf_counter()
        codes.add(call().status_code)
        times.append(time.perf_counter() - started)
        time.sleep(pause)
    return times, codes


def measure(base: str, key_a: str, key_b: str) -> dict[str, Any]:
    lines = SST2.read_text().splitlines(keepends=True)
    records = [json.loads(line) for line in lines[: LINES + SENTENCES]]
    big = "".join(  # long documents: each text is SENTENCES consecutive SST-2 sentences
        json.dumps(
            {"text": " ".join(r["text"] for r in records[i : i + SENTENCES]), "label": records[i]["label"]}
        )
        + "\n"
        for i in range(LINES)
    ).encode()
    classes = "".join(
        f'{{"text": "example {i}", "label": "class-{i % 500}"}}\n' for i in range(LINES)
    ).encode()
    every = "".join(f'{{"text": "held out {i}", "label": "class-{i}"}}\n' for i in range(500)).encode()
    small = "".join(lines[:8]).encode()
    a = httpx.Client(base_url=base, headers={"Authorization": f"Bearer {key_a}"}, timeout=120)
    b = httpx.Client(base_url=base, headers={"Authorization": f"Bearer {key_b}"}, timeout=120)
    health = httpx.Client(base_url=base, timeout=120)
    body = {
        "model": "all-MiniLM-L6-v2",
        "training_file": a.post("/v1/files", files={"file": ("c.jsonl", classes)}).json()["id"],
        "validation_file": a.post("/v1/files", files={"file": ("v.jsonl", every)}).json()["id"],
    }
    stop = threading.Event()
    results: dict[str, tuple[list[float], set[int]]] = {}
    probes = {
        "/healthz": (lambda: health.get("/healthz"), 0.02),
        "B: list files": (lambda: b.get("/v1/files"), 0.05),
        "B: list jobs": (lambda: b.get("/v1/fine_tuning/jobs"), 0.05),
        "B: upload 8 lines": (lambda: b.post("/v1/files", files={"file": ("s.jsonl", small)}), 0.2),
    }
    threads = [
        threading.Thread(target=lambda n=name, c=call, p=pause: results.__setitem__(n, _loop(stop, c, p)))
        for name, (call, pause) in probes.items()
    ]
    for thread in threads:
        thread.start()
    upload = f"A: upload 20,000 lines ({len(big) / 1e6:.0f} MB)"
    heavy: dict[str, list[float]] = {upload: [], "A: estimate 20,000 x 500 classes": []}
    codes: set[int] = set()
    for _ in range(ROUNDS):
        started = time.perf_counter()
        codes.add(a.post("/v1/files", files={"file": ("big.jsonl", big)}).status_code)
        heavy[upload].append(time.perf_counter() - started)
        started = time.perf_counter()
        codes.add(a.post("/v1/fine_tuning/jobs/estimate", json=body).status_code)
        heavy["A: estimate 20,000 x 500 classes"].append(time.perf_counter() - started)
    stop.set()
    for thread in threads:
        thread.join()
    rows = {name: {**_quantiles(t), "codes": sorted(c)} for name, (t, c) in results.items()}
    rows.update({name: {**_quantiles(t), "codes": sorted(codes)} for name, t in heavy.items()})
    return rows


def main() -> None:
    if not SST2.exists():
        print(f"{SST2} is missing: the isolation bench needs SST-2")
        return
    with tempfile.TemporaryDirectory(prefix="sgft-isolation-") as tmp:
        env = {k: v for k, v in os.environ.items() if not k.startswith("SGFT_")}
        env.update({"SGFT_DATA_DIR": tmp, "SGFT_JOB_RATE_LIMIT": "1000"})
        _sgft(env, "migrate")
        key_a, key_b = (_sgft(env, "keys", "create", "--tenant", t) for t in ("a", "b"))
        api = start_api(env, 8411, 1, Path(tmp) / "api.log")
        try:
            rows = measure("http://127.0.0.1:8411", key_a, key_b)
        finally:
            api.terminate()
            api.wait(timeout=30)
    print("| request | n | p50 ms | p99 ms | worst ms | status codes |\n|---|--:|--:|--:|--:|---|")
    for name, r in rows.items():
        times = " | ".join(f"{r[k]:.1f}" for k in ("p50_ms", "p99_ms", "max_ms"))
        print(f"| {name} | {r['n']} | {times} | {r['codes']} |")
    OUT.mkdir(exist_ok=True)
    (OUT / "isolation.json").write_text(json.dumps(rows, indent=1))


if __name__ == "__main__":
    main()
