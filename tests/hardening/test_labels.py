"""Issue 24 item 2 (its upload part): the number of distinct classification labels is capped at upload (the
file row stores them all), the training engine refuses the same files, and a validation file's labels are
matched against the training file's in one pass."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from core.models import File
from rules.datasets import MAX_CLASSES
from tests.service.api_fixtures import Api, running_api
from training.data import check_files
from training.spec import DataError


def _lines(labels: Iterator[object]) -> bytes:
    return b"".join(
        json.dumps({"text": f"example {i}", "label": x}).encode() + b"\n" for i, x in enumerate(labels)
    )


@pytest.fixture
def api(tmp_path: Path) -> Iterator[Api]:
    """The app on SQLite with an 8 MiB upload cap (room for 20,000-line files)."""
    yield from running_api(tmp_path, max_upload_bytes=8 << 20)


@pytest.mark.parametrize("kind", ["int", "str"])
def test_more_distinct_labels_than_the_cap_is_a_400_naming_count_cap_and_fix(api: Api, kind: str) -> None:
    labels = (n if kind == "int" else f"class {n}" for n in range(20_000))  # 20,000 distinct: one per line
    response = api.upload(_lines(labels), name="many.jsonl")
    assert response.status_code == 400, response.text
    error = response.json()["error"]
    assert error["param"] == "file" and error["code"] == "invalid_file"
    message = error["message"]
    assert f"many.jsonl: line {MAX_CLASSES + 1}: more than {MAX_CLASSES} distinct labels" in message
    assert "regression" in message and "fewer classes" in message
    assert api.client.get("/v1/files", headers=api.h()).json()["data"] == []


def test_labels_up_to_the_cap_are_stored_and_regression_has_no_cap(api: Api) -> None:
    at_cap = api.upload_ok(_lines(n % MAX_CLASSES for n in range(20_000)), name="at_cap.jsonl")
    regression = api.upload_ok(_lines(n + 0.25 for n in range(20_000)), name="regression.jsonl")
    with api.session() as s:
        assert len(s.get_one(File, at_cap).report["labels"]) == MAX_CLASSES  # type: ignore[index]
        assert s.get_one(File, regression).report["labels"] == []  # type: ignore[index]


def test_the_engine_refuses_the_files_the_api_refuses(tmp_path: Path) -> None:
    over = tmp_path / "over.jsonl"
    over.write_bytes(_lines(iter(range(MAX_CLASSES + 1))))
    with pytest.raises(DataError, match=f"line {MAX_CLASSES + 1}: more than {MAX_CLASSES} distinct labels"):
        check_files(over, None)
    huge = tmp_path / "huge.jsonl"
    huge.write_bytes(_lines(iter([0.5, 10**400])))
    with pytest.raises(DataError, match="line 2: label is an integer too large"):
        check_files(huge, None)
    at_cap = tmp_path / "at_cap.jsonl"
    at_cap.write_bytes(_lines(iter(range(MAX_CLASSES))))
    assert len(check_files(at_cap, at_cap)[0].labels) == MAX_CLASSES


def test_a_validation_file_of_unseen_labels_is_refused_quickly(api: Api) -> None:
    """The issue's slow request: 20,000 lines each, every validation label unseen in training (at the cap
    now). One pass over the labels, well under a second on this VM."""
    train = api.upload_ok(_lines(n % MAX_CLASSES for n in range(20_000)), name="train.jsonl")
    valid = api.upload_ok(_lines(MAX_CLASSES + n % MAX_CLASSES for n in range(20_000)), name="valid.jsonl")
    body = {"model": "all-MiniLM-L6-v2", "training_file": train, "validation_file": valid}
    started = time.perf_counter()
    response = api.client.post("/v1/fine_tuning/jobs/estimate", headers=api.h(), json=body)
    elapsed = time.perf_counter() - started
    assert response.status_code == 400 and response.json()["error"]["param"] == "validation_file"
    assert f"'{MAX_CLASSES}'" in response.json()["error"]["message"]
    assert elapsed < 2.0, f"{elapsed:.2f} s"
