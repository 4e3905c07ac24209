"""The API's hot reads (core.queries fetch_* through core.reader) on SQLite and PostgreSQL: the same answers
as the ORM reads, tenant isolation, and on PostgreSQL the asynchronous pool surviving dropped connections."""

from __future__ import annotations

import asyncio
import json
import math
from collections.abc import Iterator
from pathlib import Path
from typing import TypeVar

import pytest
from fastapi.testclient import TestClient
from pydantic import TypeAdapter
from sqlalchemy import text
from sqlalchemy.exc import OperationalError
from sqlalchemy.orm import Session
from starlette.responses import JSONResponse

from api.app import create_app
from api.responses import object_response, page_response
from api.schemas import EventPublic, JobPublic, ListPage, event_fields, job_fields
from core import jobs, queries
from core.db import get_engine, get_sessionmaker
from core.keys import create_key
from core.models import ApiKey, Base
from core.queries import EventRecord, JobRecord
from core.reader import reader
from tests.service.api_fixtures import make_settings
from tests.service.factories import make_job

T = TypeVar("T")


def run(coro):  # type: ignore[no-untyped-def]
    return asyncio.run(coro)


def test_fetches_answer_like_the_orm_reads(session: Session, db_url: str) -> None:
    made = [make_job(session, metadata={"team": "a" if i % 2 else "b"}) for i in range(5)]
    tenant = made[0].tenant_id
    other = make_job(session, tenant="other")
    jobs.fail(session, made[2].id, "boom", "it broke", param="x")  # an error object
    assert jobs.claim(session, made[3].id, "w1") is not None  # running, with progress: estimated_finish
    jobs.record_progress(
        session,
        made[3].id,
        "w1",
        step=3,
        total_steps=9,
        epoch=0.5,
        seconds_remaining=12.5,
        trained_tokens=99,
        metrics={"train_loss": 0.25},
    )
    for n in range(7):
        jobs.add_event(
            session, made[0].id, f"step {n}", type="metrics", data={"step": n, "loss": 0.5 / (n + 1)}
        )
    session.commit()
    fetch = reader(db_url)

    def orm(value: T) -> T:  # end the ORM read's transaction: on SQLite it holds the database's write lock
        session.commit()
        return value

    for job in made:
        orm_job = orm(queries.get_job(session, tenant, job.id))
        assert orm_job is not None
        record = run(queries.fetch_job(fetch, tenant, job.id))
        assert record is not None and JobPublic.of(record) == JobPublic.of(orm_job)
        assert object_response(job_fields(record)).body == JobPublic.of(orm_job).model_dump_json().encode()
    assert run(queries.fetch_job(fetch, tenant, other.id)) is None  # another tenant's job
    assert run(queries.fetch_job(fetch, tenant, "ftjob-nope")) is None

    def ids(page: tuple[list, bool]) -> tuple[list[str], bool]:  # type: ignore[type-arg]
        return [j.id for j in page[0]], page[1]

    cursors = [None, made[4].id, made[2].id, made[0].id, "ftjob-unknown", other.id]
    for after in cursors:
        for limit in (1, 2, 10):
            expected = ids(orm(queries.list_jobs(session, tenant, after=after, limit=limit)))
            assert ids(run(queries.fetch_jobs(fetch, tenant, after=after, limit=limit))) == expected
    assert ids(run(queries.fetch_jobs(fetch, tenant, after="ftjob-unknown")))[0] == [j.id for j in made[::-1]]
    for status, metadata in ((made[2].status, None), (None, {"team": "a"}), ("queued", {"team": "b"})):
        expected = ids(orm(queries.list_jobs(session, tenant, status=status, metadata=metadata)))
        assert ids(run(queries.fetch_jobs(fetch, tenant, status=status, metadata=metadata))) == expected
    assert other.id not in ids(run(queries.fetch_jobs(fetch, tenant, limit=50)))[0]

    job = made[0]
    for ascending in (False, True):
        for after in (None, 1, 5, 9, 10, 1000):
            orm_events, more = orm(
                queries.list_events(session, job.id, after=after, limit=3, ascending=ascending)
            )
            page = run(queries.fetch_events(fetch, tenant, job.id, after=after, limit=3, ascending=ascending))
            assert page is not None
            assert [EventPublic.of(e) for e in page[0]] == [EventPublic.of(e) for e in orm_events]
            assert page[1] == more
    assert run(queries.fetch_events(fetch, tenant, job.id, after=1)) == ([], False)  # the job, no events
    assert run(queries.fetch_events(fetch, "other-tenant", job.id)) is None
    assert run(queries.fetch_events(fetch, tenant, "ftjob-nope")) is None


def test_a_poll_sees_every_committed_change(session: Session, db_url: str) -> None:
    job = make_job(session)
    session.commit()  # end make_job's last read: on SQLite an open one holds the write lock
    fetch = reader(db_url)

    async def twice() -> tuple[str, str]:  # one event loop: the second read reuses the pooled connection
        first = await queries.fetch_job(fetch, job.tenant_id, job.id)
        jobs.cancel(session, job)
        session.commit()  # (likewise)
        second = await queries.fetch_job(fetch, job.tenant_id, job.id)
        assert first is not None and second is not None
        return first.status, second.status

    assert run(twice()) == ("queued", "cancelled")


def test_pooled_connections_dropped_by_the_server_are_replaced(session: Session, db_url: str) -> None:
    if not db_url.startswith("postgresql"):
        pytest.skip("the asynchronous pool is PostgreSQL's")
    job = make_job(session)
    fetch = reader(db_url)

    async def scenario() -> None:
        polls = [queries.fetch_job(fetch, job.tenant_id, job.id) for _ in range(3)]
        assert all(await asyncio.gather(*polls))  # three reads at once: three pooled connections
        session.execute(
            text(
                "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                "WHERE datname = current_database() AND pid <> pg_backend_pid()"
            )
        )
        session.commit()
        # Every pooled connection is dead: the read is retried once, on a fresh one.
        assert await queries.fetch_job(fetch, job.tenant_id, job.id) is not None

    run(scenario())
    down = db_url.replace(":5432/", ":1/")  # nothing listens there
    with pytest.raises(OperationalError):  # the API answers it with a 503
        run(queries.fetch_job(reader(down), job.tenant_id, job.id))


RECORDS = [
    JobRecord(
        id="ftjob-1",
        tenant_id="tenant-1",
        status=status,
        model="m",
        method={"type": "sparsegrad", "sparsegrad": {"hyperparameters": {"n_epochs": "auto"}}},
        hyperparameters={"learning_rate": 1e-05, "n_epochs": "auto", "text": 'é ✓ "q"'},
        resolved_hyperparameters=resolved,
        seed=1,
        suffix=suffix,
        meta=meta,
        training_file="file-1",
        validation_file=None,
        attempts=2,
        heartbeat_at=1_700_000_000.5,
        step=3,
        total_steps=9,
        epoch=0.5,
        seconds_remaining=12.25,
        metrics={"train_loss": math.nan, "big": 1e300, "inf": math.inf, "step": 3},
        error_code="out_of_memory",
        error_message="lower batch_size",
        error_param=None,
        result_files=["file-2"],
        trained_tokens=1234,
        fine_tuned_model=None,
        merge_status=None,
        created_at=1_700_000_000.9,
        finished_at=finished,
    )
    for status, suffix, meta, finished, resolved in (
        ("running", None, None, None, {"n_epochs": 3, "batch_size": 8}),
        ("failed", "s", {"team": "a"}, 1_700_000_100.2, None),
        ("succeeded", None, {}, 0.0, {}),
    )
]
EVENTS = [
    EventRecord("ftjob-1", n, 1_700_000_000.5, "info", "metrics", f"Step {n}", {"loss": 0.1}) for n in (3, 2)
]


def test_pre_serialised_json_is_the_response_models_json() -> None:
    for record in RECORDS:
        model = JobPublic.of(record)
        assert object_response(job_fields(record)).body == model.model_dump_json().encode()
        # What FastAPI sent before (the response model dumped in JSON mode, then json.dumps'd): same JSON.
        before = JSONResponse(TypeAdapter(JobPublic).dump_python(model, mode="json")).body
        assert json.loads(object_response(job_fields(record)).body) == json.loads(before)
    jobs_page = ListPage(
        data=[JobPublic.of(r) for r in RECORDS], has_more=True, first_id="ftjob-1", last_id="ftjob-1"
    )
    assert page_response([job_fields(r) for r in RECORDS], True).body == jobs_page.model_dump_json().encode()
    events_page = ListPage(
        data=[EventPublic.of(e) for e in EVENTS], has_more=False, first_id=None, last_id=None
    )
    events_page.first_id, events_page.last_id = events_page.data[0].id, events_page.data[-1].id
    assert (
        page_response([event_fields(e) for e in EVENTS], False).body == events_page.model_dump_json().encode()
    )
    assert page_response([], False).body == ListPage(data=[], has_more=False).model_dump_json().encode()
    assert page_response([], False).media_type == "application/json"


@pytest.fixture
def pg_client(pg_schema: str, tmp_path: Path) -> Iterator[tuple[TestClient, str, str, str]]:
    """The app on PostgreSQL (so its reads take the asynchronous pool), with two tenants' keys."""
    tables = ", ".join(t.name for t in Base.metadata.sorted_tables)
    with get_engine(pg_schema).begin() as conn:
        conn.execute(text(f"TRUNCATE {tables} CASCADE"))
    settings = make_settings(tmp_path, database_url=pg_schema)
    with get_sessionmaker(pg_schema)() as s:
        _, key_a = create_key(s, "tenant-a", settings.secret_key)
        _, key_b = create_key(s, "tenant-b", settings.secret_key)
        job = make_job(s, tenant="tenant-a")
        for n in range(5):
            jobs.add_event(s, job.id, f"event {n}")
        s.commit()
    with TestClient(create_app(settings)) as client:
        yield client, key_a, key_b, job.id


def test_routes_on_postgresql(pg_client: tuple[TestClient, str, str, str]) -> None:
    client, key_a, key_b, job_id = pg_client
    a, b = {"Authorization": f"Bearer {key_a}"}, {"Authorization": f"Bearer {key_b}"}
    got = client.get(f"/v1/fine_tuning/jobs/{job_id}", headers=a)
    assert got.status_code == 200 and got.json()["id"] == job_id and got.json()["object"] == "fine_tuning.job"
    assert got.headers["content-type"] == "application/json"
    listed = client.get("/v1/fine_tuning/jobs?limit=1", headers=a).json()
    assert [j["id"] for j in listed["data"]] == [job_id] and listed["first_id"] == job_id
    events = client.get(f"/v1/fine_tuning/jobs/{job_id}/events?limit=3", headers=a).json()
    assert [e["message"] for e in events["data"]] == ["event 4", "event 3", "event 2"] and events["has_more"]
    older = client.get(f"/v1/fine_tuning/jobs/{job_id}/events?after={events['last_id']}", headers=a).json()
    assert older["data"][0]["message"] == "event 1"
    for path in (f"/v1/fine_tuning/jobs/{job_id}", f"/v1/fine_tuning/jobs/{job_id}/events"):
        denied = client.get(path, headers=b)
        assert denied.status_code == 404 and denied.json()["error"]["code"] == "not_found"
    assert client.get("/v1/fine_tuning/jobs", headers=b).json()["data"] == []
    bad_cursor = client.get(f"/v1/fine_tuning/jobs/{job_id}/events?after=x-y", headers=a)
    assert bad_cursor.status_code == 400
    assert client.get("/v1/fine_tuning/jobs/nope/events?after=x-y", headers=a).status_code == 404


def test_a_database_outage_on_a_poll_is_a_503(tmp_path: Path) -> None:
    settings = make_settings(tmp_path, database_url="postgresql+psycopg2://postgres@127.0.0.1:1/none")
    app = create_app(settings)
    key = "sgft-abc-secret"
    # A key verified moments ago (cached), so the poll's own read is what meets the outage.
    app.state.key_cache.put(key, ApiKey(id="key-1", tenant_id="tenant-1", prefix="abc", key_hash="x"))
    with TestClient(app) as client:
        for path in (
            "/v1/fine_tuning/jobs/ftjob-1",
            "/v1/fine_tuning/jobs",
            "/v1/fine_tuning/jobs/ftjob-1/events",
        ):
            answer = client.get(path, headers={"Authorization": f"Bearer {key}"})
            assert answer.status_code == 503 and answer.headers["retry-after"] == "5", path
            assert answer.json()["error"]["type"] == "service_unavailable"
