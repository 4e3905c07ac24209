"""/v1/fine_tuning/jobs and /v1/models through TestClient (in-memory broker, no worker)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient

from api.app import create_app
from core.db import get_engine, get_sessionmaker
from core.keys import create_key
from core.models import Base
from core.queue import producer
from tests.service.api_fixtures import CHAT, Api, make_settings, sst2_bytes
from training.hparams import resolve

MODEL = "all-MiniLM-L6-v2"


def _files(api: Api, key: str | None = None) -> tuple[str, str]:
    return (
        api.upload_ok(sst2_bytes("train", 16), key=key),
        api.upload_ok(sst2_bytes("dev", 8), "dev.jsonl", key=key),
    )


def _create(api: Api, body: dict[str, Any], key: str | None = None, **headers: str) -> Any:
    return api.client.post("/v1/fine_tuning/jobs", headers={**api.h(key), **headers}, json=body)


def test_create_job_shape_and_message(api: Api) -> None:
    train, dev = _files(api)
    body = {
        "model": MODEL,
        "training_file": train,
        "validation_file": dev,
        "suffix": "demo",
        "seed": 7,
        "method": {"type": "sparsegrad", "sparsegrad": {"hyperparameters": {"density": 0.05}}},
        "hyperparameters": {"n_epochs": 1},
        "metadata": {"team": "nlp"},
    }
    response = _create(api, body)
    assert response.status_code == 200, response.text
    job = response.json()
    assert job["object"] == "fine_tuning.job" and job["id"].startswith("ftjob-")
    assert job["status"] == "queued" and job["model"] == MODEL and job["seed"] == 7
    assert job["training_file"] == train and job["validation_file"] == dev and job["result_files"] == []
    assert job["method"]["type"] == "sparsegrad"
    assert job["hyperparameters"] == {
        "n_epochs": 1,
        "density": 0.05,
        "batch_size": "auto",
        "learning_rate_multiplier": "auto",
    }
    assert job["metadata"] == {"team": "nlp"} and job["error"] is None and job["fine_tuned_model"] is None
    assert job["progress"] == {"step": 0, "total_steps": None, "epoch": 0.0, "seconds_remaining": None}
    # The row was committed and then "run job X" was sent with task id = job id to the cpu queue.
    queue = api.settings.queue_name("cpu")
    with producer(api.settings).connection_for_read() as conn:
        message = conn.SimpleQueue(queue).get(timeout=2)
        assert message.headers["id"] == job["id"] and message.headers["task"] == "sgft.run_job"
        assert json.loads(message.body)[0] == [job["id"]]
        message.ack()


def test_supervised_means_sparsegrad(api: Api) -> None:
    train, _ = _files(api)
    job = _create(api, {"model": MODEL, "training_file": train, "method": {"type": "supervised"}}).json()
    assert job["method"]["type"] == "sparsegrad"


def test_create_validation_names_the_param(api: Api) -> None:
    train, dev = _files(api)
    other_train, _ = _files(api, api.key_b)
    chat = api.upload_ok(CHAT, "chat.jsonl")
    cases = [
        ({"model": "gpt-9", "training_file": train}, "model"),
        ({"model": MODEL, "training_file": "file-missing"}, "training_file"),
        ({"model": MODEL, "training_file": other_train}, "training_file"),  # another tenant's file
        ({"model": MODEL, "training_file": train, "validation_file": "file-nope"}, "validation_file"),
        ({"model": MODEL, "training_file": chat}, "training_file"),  # chat data on a classifier
        ({"model": MODEL, "training_file": train, "validation_file": chat}, "validation_file"),
        ({"model": MODEL, "training_file": train, "method": {"type": "magic"}}, "method.type"),
        (
            {"model": MODEL, "training_file": train, "hyperparameters": {"n_epoch": 2}},
            "hyperparameters.n_epoch",
        ),
        (
            {"model": MODEL, "training_file": train, "hyperparameters": {"batch_size": "big"}},
            "hyperparameters.batch_size",
        ),
        (
            {"model": MODEL, "training_file": train, "hyperparameters": {"max_delta_density": 0.005}},
            "hyperparameters.max_delta_density",  # below the default density 0.01
        ),
        (
            {
                "model": MODEL,
                "training_file": train,
                "method": {"type": "lora", "lora": {"hyperparameters": {"max_delta_density": 0.1}}},
            },
            "hyperparameters.max_delta_density",  # LoRA's delta is not sparse
        ),
        ({"model": MODEL, "training_file": train, "suffix": "a/b"}, "suffix"),
        ({"model": MODEL}, "training_file"),
    ]
    for body, param in cases:
        response = _create(api, body)
        assert response.status_code == 400, (body, response.text)
        error = response.json()["error"]
        assert error["param"] == param, (body, error)
        assert error["type"] == "invalid_request_error" and error["message"]
    assert api.client.get("/v1/fine_tuning/jobs", headers=api.h()).json()["data"] == []


def test_idempotent_create(api: Api) -> None:
    train, _ = _files(api)
    body = {"model": MODEL, "training_file": train}
    first = _create(api, body, **{"Idempotency-Key": "abc"}).json()
    again = _create(api, body, **{"Idempotency-Key": "abc"}).json()
    assert first["id"] == again["id"]
    other = _create(api, body, api.key_b, **{"Idempotency-Key": "abc"})  # keys are per tenant
    assert other.status_code == 400  # tenant B cannot use tenant A's file
    conflict = _create(api, {**body, "seed": 3}, **{"Idempotency-Key": "abc"})
    assert conflict.status_code == 409 and conflict.json()["error"]["param"] == "Idempotency-Key"
    assert len(api.client.get("/v1/fine_tuning/jobs", headers=api.h()).json()["data"]) == 1


def test_list_pagination_and_filters(api: Api) -> None:
    train, _ = _files(api)
    ids = [
        _create(api, {"model": MODEL, "training_file": train, "metadata": {"n": str(i % 2)}}).json()["id"]
        for i in range(5)
    ]
    seen: list[str] = []
    after = ""
    while True:
        page = api.client.get(f"/v1/fine_tuning/jobs?limit=2&after={after}", headers=api.h()).json()
        seen += [j["id"] for j in page["data"]]
        if not page["has_more"]:
            break
        after = page["last_id"]
    assert seen == list(reversed(ids))  # newest first
    odd = api.client.get("/v1/fine_tuning/jobs?metadata[n]=1", headers=api.h()).json()["data"]
    assert {j["id"] for j in odd} == {ids[1], ids[3]}
    api.client.post(f"/v1/fine_tuning/jobs/{ids[0]}/cancel", headers=api.h())
    cancelled = api.client.get("/v1/fine_tuning/jobs?status=cancelled", headers=api.h()).json()["data"]
    assert [j["id"] for j in cancelled] == [ids[0]]


def test_cancel_pause_resume_queued(api: Api) -> None:
    train, _ = _files(api)
    job_id = _create(api, {"model": MODEL, "training_file": train}).json()["id"]
    paused = api.client.post(f"/v1/fine_tuning/jobs/{job_id}/pause", headers=api.h()).json()
    assert paused["status"] == "paused"
    assert (
        api.client.post(f"/v1/fine_tuning/jobs/{job_id}/resume", headers=api.h()).json()["status"] == "queued"
    )
    cancelled = api.client.post(f"/v1/fine_tuning/jobs/{job_id}/cancel", headers=api.h())
    assert cancelled.status_code == 200 and cancelled.json()["status"] == "cancelled"
    again = api.client.post(f"/v1/fine_tuning/jobs/{job_id}/cancel", headers=api.h())
    assert again.status_code == 409 and "cancelled" in again.json()["error"]["message"]
    merge = api.client.post(f"/v1/fine_tuning/jobs/{job_id}/merge", headers=api.h())
    assert merge.status_code == 409


def test_cancel_and_pause_of_a_running_job_answer_with_the_state_they_lead_to(api: Api) -> None:
    """A running job stops at its next step: the POST answers "cancelling" / "pausing" (the openai client
    takes it), while GET keeps OpenAI's "running" with `stop_requested` until the worker stops it."""
    from openai import OpenAI

    from core import jobs
    from rules.states import JobStatus

    train, _ = _files(api)
    to_cancel, to_pause = (_create(api, {"model": MODEL, "training_file": train}).json()["id"] for _ in "ab")
    with api.session() as s:
        for job_id in (to_cancel, to_pause):
            assert jobs.claim(s, job_id, f"worker-{job_id}") is not None  # what a worker does: now running
    client = OpenAI(base_url="http://testserver/v1", api_key=api.key_a, http_client=api.client, max_retries=0)
    cancelled = client.fine_tuning.jobs.cancel(to_cancel)
    assert cancelled.id == to_cancel and cancelled.status == "cancelling"
    paused = api.client.post(f"/v1/fine_tuning/jobs/{to_pause}/pause", headers=api.h())
    assert paused.status_code == 200 and paused.json()["status"] == "pausing"
    assert paused.json()["stop_requested"] == "pause"
    for job_id, request in ((to_cancel, "cancel"), (to_pause, "pause")):
        got = api.client.get(f"/v1/fine_tuning/jobs/{job_id}", headers=api.h()).json()
        assert (got["status"], got["stop_requested"]) == ("running", request)
        listed = api.client.get("/v1/fine_tuning/jobs?status=running", headers=api.h()).json()["data"]
        assert {j["id"]: j["stop_requested"] for j in listed}[job_id] == request
    again = api.client.post(f"/v1/fine_tuning/jobs/{to_cancel}/cancel", headers=api.h()).json()
    assert again["status"] == "cancelling"  # asking again answers the same
    with api.session() as s:  # the worker honours the requests at its next step
        jobs.finish_stopped(s, to_cancel, f"worker-{to_cancel}", JobStatus.CANCELLED)
        jobs.finish_stopped(s, to_pause, f"worker-{to_pause}", JobStatus.PAUSED)
    for job_id, final in ((to_cancel, "cancelled"), (to_pause, "paused")):
        got = api.client.get(f"/v1/fine_tuning/jobs/{job_id}", headers=api.h()).json()
        assert (got["status"], got["stop_requested"]) == (final, None)
    assert client.fine_tuning.jobs.retrieve(to_pause).status == "paused"
    done = api.client.post(f"/v1/fine_tuning/jobs/{to_pause}/cancel", headers=api.h()).json()
    assert done["status"] == "cancelled" and done["stop_requested"] is None  # immediate: the final state


def test_events_pagination_and_stream(api: Api) -> None:
    train, _ = _files(api)
    job_id = _create(api, {"model": MODEL, "training_file": train}).json()["id"]
    api.client.post(f"/v1/fine_tuning/jobs/{job_id}/cancel", headers=api.h())
    url = f"/v1/fine_tuning/jobs/{job_id}/events"
    newest = api.client.get(f"{url}?limit=2", headers=api.h()).json()
    assert newest["has_more"] and newest["data"][0]["message"] == "Job cancelled"
    assert newest["data"][0]["object"] == "fine_tuning.job.event" and newest["data"][0]["type"] == "message"
    older = api.client.get(f"{url}?limit=100&after={newest['last_id']}", headers=api.h()).json()
    assert not older["has_more"] and older["data"][-1]["message"].startswith("Created fine-tuning job")
    asc = api.client.get(f"{url}?order=asc&limit=100", headers=api.h()).json()["data"]
    assert [e["id"] for e in asc] == list(reversed([e["id"] for e in newest["data"] + older["data"]]))
    with api.client.stream("GET", f"{url}?stream=true", headers=api.h()) as response:
        assert response.headers["content-type"].startswith("text/event-stream")
        text = "".join(response.iter_text())
    blocks = [b for b in text.split("\n\n") if b.strip()]
    assert [b.split("\n")[0] for b in blocks[:-1]] == [f"id: {e['id']}" for e in asc]
    assert blocks[-1].startswith("event: end") and '"status": "cancelled"' in blocks[-1]


def test_tenant_isolation_on_job_routes(api: Api) -> None:
    train, _ = _files(api)
    job_id = _create(api, {"model": MODEL, "training_file": train}).json()["id"]
    other = api.h(api.key_b)
    base = f"/v1/fine_tuning/jobs/{job_id}"
    for method, path in [
        ("get", base),
        ("post", f"{base}/cancel"),
        ("post", f"{base}/pause"),
        ("post", f"{base}/resume"),
        ("post", f"{base}/merge"),
        ("get", f"{base}/events"),
        ("get", f"{base}/events?stream=true"),
        ("get", f"{base}/checkpoints"),
    ]:
        response = api.client.request(method, path, headers=other)
        assert response.status_code == 404, (method, path, response.text)
        assert response.json()["error"]["param"] == "fine_tuning_job_id"
    assert api.client.get("/v1/fine_tuning/jobs", headers=other).json()["data"] == []
    assert api.client.get(base, headers=api.h()).json()["status"] == "queued"  # untouched
    assert api.client.get(f"{base}/checkpoints", headers=api.h()).json()["data"] == []


def test_models_and_estimate(api: Api) -> None:
    models = api.client.get("/v1/models", headers=api.h()).json()
    assert MODEL in [m["id"] for m in models["data"]]
    assert api.client.get(f"/v1/models/{MODEL}", headers=api.h()).json()["owned_by"] == "system"
    assert api.client.get("/v1/models/nope", headers=api.h()).status_code == 404
    train, _ = _files(api)
    body = {"model": MODEL, "training_file": train, "hyperparameters": {"n_epochs": 2, "batch_size": 4}}
    estimate = api.client.post("/v1/fine_tuning/jobs/estimate", headers=api.h(), json=body).json()
    assert estimate["training_examples"] == 16 and estimate["total_steps"] == 8
    # no finished job yet: the table of measured CPU throughputs gives the duration, and `note` says so
    assert estimate["measured_tokens_per_second"] is None and estimate["throughput_source"] == "table"
    assert estimate["estimated_seconds"] > 0 and "table of measured throughputs" in estimate["note"]


def test_estimate_resolves_auto_settings_as_the_engine_does(api: Api, tmp_path: Path) -> None:
    """A fresh service (no finished job), every setting "auto": steps and a duration, and the epochs, batch
    size, steps and learning rate the engine resolves for the same file."""
    data = sst2_bytes("train", 40)
    train = api.upload_ok(data)
    for method in ("sparsegrad", "lora", "full", "meprop"):
        body = {
            "model": MODEL,
            "training_file": train,
            "method": {"type": method},
            "hyperparameters": {"n_epochs": "auto", "batch_size": "auto"},
        }
        answer = api.client.post("/v1/fine_tuning/jobs/estimate", headers=api.h(), json=body)
        assert answer.status_code == 200, answer.text
        est = answer.json()
        hp = resolve({"n_epochs": "auto", "batch_size": "auto"}, 40, "classification", method, 512)
        assert (est["n_epochs"], est["batch_size"]) == (hp.n_epochs, hp.batch_size) == (3, 8)
        assert est["total_steps"] == hp.total_steps == 15
        assert est["learning_rate"] == hp.learning_rate
        assert est["throughput_source"] == "table" and est["estimated_seconds"] > 0
        per_step = est["approx_tokens_per_epoch"] / hp.steps_per_epoch
        assert est["estimated_seconds"] == pytest.approx(per_step * 15 / est["tokens_per_second"])
    capped = {"model": MODEL, "training_file": train, "hyperparameters": {"max_steps": 7}}
    est = api.client.post("/v1/fine_tuning/jobs/estimate", headers=api.h(), json=capped).json()
    engine = resolve({"max_steps": 7}, 40, "classification", "sparsegrad", 512)
    assert est["total_steps"] == engine.total_steps == 7


def test_rate_limit_per_key(tmp_path: Path) -> None:
    settings = make_settings(tmp_path, job_rate_limit=2)
    Base.metadata.create_all(get_engine(settings.database_url))
    with get_sessionmaker(settings.database_url)() as s:
        _, key = create_key(s, "t", settings.secret_key)
    with TestClient(create_app(settings)) as client:
        headers = {"Authorization": f"Bearer {key}"}
        body = {"model": MODEL, "training_file": "file-x"}
        codes = [
            client.post("/v1/fine_tuning/jobs", headers=headers, json=body).status_code for _ in range(3)
        ]
        assert codes == [400, 400, 429]
        limited = client.post("/v1/fine_tuning/jobs", headers=headers, json=body)
        assert limited.json()["error"]["code"] == "rate_limit_exceeded" and "Retry-After" in limited.headers


def test_ops_endpoints(api: Api, tmp_path: Path) -> None:
    assert api.client.get("/healthz").json() == {"status": "ok"}
    ready = api.client.get("/readyz")
    assert ready.status_code == 200 and ready.json()["checks"] == {"database": "ok", "broker": "ok"}
    metrics = api.client.get("/metrics").text
    assert 'sgft_jobs{status="queued"}' in metrics and "sgft_http_requests_total" in metrics
    assert api.client.get("/docs").status_code == 200
    down = make_settings(tmp_path / "down", broker_url="redis://127.0.0.1:1/0")
    Base.metadata.create_all(get_engine(down.database_url))
    with TestClient(create_app(down)) as client:
        response = client.get("/readyz")
        assert response.status_code == 503
        assert response.json()["checks"]["broker"].startswith("unavailable")
        assert "Traceback" not in response.text
