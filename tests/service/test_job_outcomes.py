"""Outcomes and settings a user sees through the API: jobs created over HTTP, run by the real worker code
(worker.runner.run_job, in process) on a tiny random BERT and SST-2 slices."""

from __future__ import annotations

import json
from typing import Any

from core.models import Job
from tests.service.api_fixtures import Api, sst2_bytes
from training.testing import make_tiny_model
from worker.runner import run_job


def _run(api: Api, body: dict[str, Any]) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """Create the job over HTTP, run it on the worker, and read it and its events back over HTTP."""
    make_tiny_model(api.settings.models_path, "tiny-bert")
    response = api.client.post("/v1/fine_tuning/jobs", headers=api.h(), json={"model": "tiny-bert", **body})
    assert response.status_code == 200, response.text
    job_id = response.json()["id"]
    run_job(job_id, api.settings)
    job = api.client.get(f"/v1/fine_tuning/jobs/{job_id}", headers=api.h()).json()
    events = api.client.get(f"/v1/fine_tuning/jobs/{job_id}/events?limit=100", headers=api.h()).json()
    return job, events["data"]


def test_lr_0_1_on_sst2_shows_its_settings_keeps_the_best_step_and_warns(api: Api) -> None:
    train = api.upload_ok(sst2_bytes("train", 64))
    valid = api.upload_ok(sst2_bytes("dev", 32), "valid.jsonl")
    hyper = {"learning_rate_multiplier": 100, "n_epochs": 3, "max_seq_length": 32, "basis_steps": 2}
    job, events = _run(api, {"training_file": train, "validation_file": valid, "hyperparameters": hyper})
    assert job["status"] == "succeeded", job["error"]
    shown = {
        "n_epochs": 3,
        "batch_size": 8,
        "learning_rate": 0.1,
        "learning_rate_multiplier": 100.0,
        "result_checkpoint": "best",
        "density": 0.01,
        "support": "dynamic",
        "selection": "gradient",
        "support_block": 20.0,
        "delta_dtype": "bfloat16",
        "max_seq_length": 32,
        "basis_steps": 2,
    }
    assert job["hyperparameters"] == shown and job["method"]["sparsegrad"]["hyperparameters"] == shown
    with api.session() as s:  # the request itself is kept: a resumed attempt resolves "auto" from it again
        assert s.get_one(Job, job["id"]).hyperparameters["batch_size"] == "auto"
    levels = {e["message"]: e["level"] for e in events}
    kept = [m for m in levels if m.startswith("Kept ")]
    warned = [m for m, level in levels.items() if level == "warning"]
    assert len(kept) == 1 and len(warned) == 1
    assert job["metrics"]["result_step"] < 24 and kept[0].startswith(
        f"Kept step {job['metrics']['result_step']:g} as the result: lowest valid_loss "
    )
    accuracy = job["metrics"]["valid_accuracy"]
    assert warned[0].startswith(
        f"Validation accuracy {accuracy:.4f} is at most the majority label's share of the validation set "
        "(0.5312, label '1') plus one point"
    )


def test_a_diverging_job_fails_with_diverged(api: Api) -> None:
    def regression(split: str, n: int) -> bytes:
        rows = [json.loads(line) for line in sst2_bytes(split, n).decode().splitlines()]
        return "".join(json.dumps({**r, "label": 0.1 * r["label"]}) + "\n" for r in rows).encode()

    train = api.upload_ok(regression("train", 64))
    valid = api.upload_ok(regression("dev", 32), "valid.jsonl")
    hyper = {"learning_rate": 0.1, "batch_size": 8, "n_epochs": 3, "max_seq_length": 32}
    body = {
        "training_file": train,
        "validation_file": valid,
        "method": {"type": "full"},
        "hyperparameters": hyper,
    }
    job, events = _run(api, body)
    assert job["status"] == "failed" and job["error"]["code"] == "diverged"
    assert job["error"]["param"] == "learning_rate"
    assert job["error"]["message"].startswith("Training diverged at step 11: the training loss stayed above")
    assert job["error"]["message"].endswith("lower the learning rate: it was 0.1; try 0.01 (a tenth)")
    assert job["hyperparameters"]["learning_rate"] == 0.1 and job["hyperparameters"]["batch_size"] == 8


def test_best_without_a_validation_file_is_refused(api: Api) -> None:
    train = api.upload_ok(sst2_bytes("train", 16))
    body = {
        "model": "all-MiniLM-L6-v2",
        "training_file": train,
        "hyperparameters": {"result_checkpoint": "best"},
    }
    response = api.client.post("/v1/fine_tuning/jobs", headers=api.h(), json=body)
    assert (
        response.status_code == 400
        and response.json()["error"]["param"] == "hyperparameters.result_checkpoint"
    )
