"""Issue 24 item 7c: a replay of a job creation (same Idempotency-Key, same body) answers the earlier job
without counting against the per-key job rate limit; new jobs are still limited, bursts included."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.service.api_fixtures import Api, running_api, sst2_bytes

LIMIT = 3


@pytest.fixture
def api(tmp_path: Path) -> Iterator[Api]:
    """The app on SQLite with a limit of 3 job creations per key per minute."""
    yield from running_api(tmp_path, job_rate_limit=LIMIT)


def _post(
    api: Api, body: dict[str, object], idempotency_key: str | None = None
) -> tuple[int, dict[str, str]]:
    headers = api.h() | ({"Idempotency-Key": idempotency_key} if idempotency_key else {})
    response = api.client.post("/v1/fine_tuning/jobs", headers=headers, json=body)
    return response.status_code, response.json()


def test_replays_are_not_counted_and_new_jobs_still_are(api: Api) -> None:
    body = {"model": "all-MiniLM-L6-v2", "training_file": api.upload_ok(sst2_bytes("train", 8))}
    status, first = _post(api, body, "key-1")
    assert status == 200
    for _ in range(3 * LIMIT):  # three times the limit in replays: each answers the same job
        status, again = _post(api, body, "key-1")
        assert status == 200 and again["id"] == first["id"]
    for n in range(2, LIMIT + 1):  # the limit's other creations are still there
        assert _post(api, body, f"key-{n}")[0] == 200
    status, limited = _post(api, body, "key-new")
    assert status == 429 and limited["error"]["code"] == "rate_limit_exceeded"
    assert _post(api, body)[0] == 429  # without a key, too
    status, replay = _post(api, body, "key-1")  # at the limit, a replay still answers its job
    assert status == 200 and replay["id"] == first["id"]
    status, reused = _post(api, {**body, "suffix": "other"}, "key-1")  # another body: refused, as before
    assert status == 409 and reused["error"]["code"] == "idempotency_key_reused"
    jobs = api.client.get("/v1/fine_tuning/jobs", headers=api.h()).json()["data"]
    assert len(jobs) == LIMIT


def test_a_burst_of_new_keys_gets_no_more_than_the_limit(api: Api) -> None:
    body = {"model": "all-MiniLM-L6-v2", "training_file": api.upload_ok(sst2_bytes("train", 8))}
    start = threading.Barrier(4 * LIMIT)
    statuses: list[int] = []

    def create(n: int) -> None:
        start.wait()
        statuses.append(_post(api, body, f"burst-{n}")[0])

    threads = [threading.Thread(target=create, args=(n,)) for n in range(4 * LIMIT)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(statuses) == [200] * LIMIT + [429] * 3 * LIMIT
