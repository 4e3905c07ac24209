"""`resources.devices` on a create request (TestClient, in-memory broker, no worker): echoed on the job,
routed to the queue of its device count, refused with a 400 naming the problem when no worker could take it
or the engine could not run it."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from core.queue import producer
from tests.service.api_fixtures import Api, running_api, sst2_bytes

MODEL = "all-MiniLM-L6-v2"


@pytest.fixture
def api(tmp_path: Path) -> Iterator[Api]:
    yield from running_api(tmp_path, max_devices=4)


def _create(api: Api, **body: Any) -> Any:
    train = api.upload_ok(sst2_bytes("train", 16))
    payload = {"model": MODEL, "training_file": train, **body}
    return api.client.post("/v1/fine_tuning/jobs", headers=api.h(), json=payload)


def test_devices_default_to_one_and_are_echoed_and_routed(api: Api) -> None:
    one = _create(api).json()
    assert one["resources"] == {"devices": 1}
    two = _create(api, resources={"devices": 2}, hyperparameters={"basis_steps": 4})
    assert two.status_code == 200, two.text
    job = two.json()
    assert job["resources"] == {"devices": 2}
    assert api.client.get(f"/v1/fine_tuning/jobs/{job['id']}", headers=api.h()).json()["resources"] == {
        "devices": 2
    }
    # "run job X" went to the queue of 2-device jobs, which only workers of 2+ devices consume
    with producer(api.settings).connection_for_read() as conn:
        message = conn.SimpleQueue(api.settings.queue_name("cpu-x2")).get(timeout=2)
        assert json.loads(message.body)[0] == [job["id"]]
        message.ack()


@pytest.mark.parametrize(
    ("body", "param", "words"),
    [
        ({"resources": {"devices": 8}}, "resources.devices", "at most 4 (SGFT_MAX_DEVICES)"),
        ({"resources": {"devices": 0}}, "resources.devices", "between 1 and 64"),
        ({"resources": {"devices": "two"}}, "resources.devices", "whole number"),
        ({"resources": {"devices": 2.5}}, "resources.devices", "whole number"),
        ({"resources": {"gpus": 2}}, "resources", "unknown key"),
        (
            {"resources": {"devices": 4}, "hyperparameters": {"batch_size": 2}},
            "hyperparameters.batch_size",
            "below",
        ),
        (
            {"resources": {"devices": 3}, "hyperparameters": {"basis_steps": 2}},
            "hyperparameters.basis_steps",
            "below the job's 3 devices",
        ),
    ],
)
def test_unservable_device_requests_are_a_400_naming_the_problem(
    api: Api, body: dict[str, Any], param: str, words: str
) -> None:
    response = _create(api, **body)
    assert response.status_code == 400, response.text
    error = response.json()["error"]
    assert error["param"] == param and words in error["message"], error
