"""One tenant or one request must not stall the others, on the embedded default (SQLite) with a real
`sgft serve`: a database lock during /readyz, big label sets during estimates, user patterns, abandoned
uploads."""

from __future__ import annotations

import os
import sqlite3
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.service.helpers import sst2_lines
from tests.service.stack import Stack, serve_sqlite

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    """`sgft serve` on SQLite, two tenants; an abandoned upload (2 h old) and a live one (now) in tmp/."""
    tmp = tmp_path_factory.mktemp("isolation")
    uploads = tmp / "data" / "tmp"
    uploads.mkdir(parents=True)
    for name, age in (("upload-abandoned", 7200), ("upload-live", 0)):
        (uploads / name).write_bytes(b"x")
        os.utime(uploads / name, (time.time() - age, time.time() - age))
    for stack in serve_sqlite(tmp, "alice", SGFT_JOB_RATE_LIMIT="1000"):
        stack.other = stack.sgft("keys", "create", "--tenant", "bob").strip()  # type: ignore[attr-defined]
        yield stack


def _db(stack: Stack) -> Path:
    return Path(stack.env["SGFT_DATA_DIR"]) / "sgft.db"


def test_abandoned_uploads_are_swept_at_start_and_live_ones_kept(server: Stack) -> None:
    left = sorted(p.name for p in (Path(server.env["SGFT_DATA_DIR"]) / "tmp").glob("upload-*"))
    assert left == ["upload-live"]


def test_a_database_lock_during_readyz_leaves_the_api_healthy_a_second_after_release(server: Stack) -> None:
    """Another process holds SQLite's write lock for 6 s while /readyz is asked (the probe used to open a
    transaction on a thread it gave up on after 5 s, and hold the lock until restart)."""
    assert _db(server).exists()
    locked, release = threading.Event(), threading.Event()

    def hold() -> None:
        conn = sqlite3.connect(_db(server), timeout=30, isolation_level=None)
        conn.execute("BEGIN IMMEDIATE")
        locked.set()
        release.wait(20)
        conn.execute("ROLLBACK")
        conn.close()

    holder = threading.Thread(target=hold)
    holder.start()
    try:
        assert locked.wait(10)
        since = time.monotonic()
        with httpx.Client(base_url=server.url, timeout=15) as c:
            ready = c.get("/readyz")
            assert ready.status_code in (200, 503), ready.text  # an answer, within its own time bound
        time.sleep(max(0.0, 6 - (time.monotonic() - since)))
    finally:
        release.set()
        holder.join()
    time.sleep(1)
    with server.client() as c:
        upload = c.post("/v1/files", files={"file": ("t.jsonl", "".join(sst2_lines("train", 8)).encode())})
        assert upload.status_code == 200, upload.text  # it writes: no lock was left behind
        assert c.get("/readyz").json()["status"] == "ok"


def _upload(c: httpx.Client, lines: list[str], name: str) -> str:
    response = c.post("/v1/files", files={"file": (name, "".join(lines).encode())})
    assert response.status_code == 200, response.text
    return str(response.json()["id"])


def test_estimates_over_many_labels_leave_other_tenants_served(server: Stack) -> None:
    """A 20,000-line training file with 500 classes, a validation file holding every one of them: each
    estimate compares the label sets outside any transaction, so another tenant's uploads and lists are
    answered (never a 503) while estimates run back to back."""
    train = [f'{{"text": "example {i}", "label": "class-{i % 500}"}}\n' for i in range(20_000)]
    valid = [f'{{"text": "held out {i}", "label": "class-{i}"}}\n' for i in range(500)]
    with server.client() as c:
        body = {"model": "all-MiniLM-L6-v2", "training_file": _upload(c, train, "t.jsonl")}
        body["validation_file"] = _upload(c, valid, "v.jsonl")
    stop = threading.Event()
    statuses: list[int] = []

    def estimates() -> None:
        with server.client() as c:
            while not stop.is_set():
                statuses.append(c.post("/v1/fine_tuning/jobs/estimate", json=body).status_code)

    runner = threading.Thread(target=estimates)
    runner.start()
    others: list[int] = []
    try:
        with httpx.Client(base_url=server.url, headers={"Authorization": f"Bearer {server.other}"}) as c:  # type: ignore[attr-defined]
            for i in range(5):
                others.append(
                    c.post(
                        "/v1/files", files={"file": (f"b{i}.jsonl", "".join(sst2_lines("train", 8)))}
                    ).status_code
                )
                others.append(c.get("/v1/files").status_code)
                others.append(c.get("/v1/fine_tuning/jobs").status_code)
    finally:
        stop.set()
        runner.join()
    assert statuses and set(statuses) == {200}, statuses
    assert set(others) == {200}, others


@pytest.mark.parametrize(
    ("pattern", "problem"),
    [
        ("(a+)+$", "regular expressions are not accepted"),
        ("x" * 201, "at most 200"),
        (["a"] * 65, "at most 64"),
    ],
)
def test_user_module_patterns_are_bounded_globs_not_regexes(
    server: Stack, pattern: object, problem: str
) -> None:
    with server.client() as c:
        train = _upload(c, sst2_lines("train", 8), "t.jsonl")
        body = {
            "model": "all-MiniLM-L6-v2",
            "training_file": train,
            "hyperparameters": {"target_modules": pattern},
        }
        refused = c.post("/v1/fine_tuning/jobs", json=body)
        assert refused.status_code == 400 and problem in refused.json()["error"]["message"], refused.text
        assert refused.json()["error"]["param"] == "hyperparameters.target_modules"
        body["hyperparameters"] = {"target_modules": "*.intermediate.dense,output.dense"}
        assert c.post("/v1/fine_tuning/jobs/estimate", json=body).status_code == 200
