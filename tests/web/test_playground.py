"""The job page's playground in headless Chromium against the real service (API, worker, sgft infer)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.web.service import TINY_CHAT_MODEL, TINY_MODEL, Service, sst2_slice
from tests.web.test_page import new_page
from training.testing import chat_records

pytestmark = [pytest.mark.browser, pytest.mark.integration]
QUESTION = "is the answer yes ?"


def _job(service: Service, model: str, path: Path, **hyper: Any) -> dict[str, Any]:
    body = {"model": model, "training_file": service.upload(path), "hyperparameters": hyper}
    job = service.api("POST", "/v1/fine_tuning/jobs", json=body)
    return service.wait_job(job["id"], {"succeeded"})


def _reply(service: Service, model: str) -> str:
    body = {
        "model": model,
        "messages": [{"role": "user", "content": QUESTION}],
        "max_tokens": 64,
        "temperature": 0,
    }
    answer = service.api("POST", "/v1/chat/completions", json=body)
    return str(answer["choices"][0]["message"]["content"])


def _open_job(browser: Any, service: Service, job_id: str) -> Any:
    page = new_page(browser, service)
    page.goto(f"{service.base_url}/#/jobs/{job_id}")
    page.get_by_test_id("playground").wait_for()
    return page


def test_chat_playground_streams_base_and_fine_tune_side_by_side(
    browser: Any, service: Service, tmp_path: Path
) -> None:
    data = tmp_path / "chat.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in chat_records(16)))
    job = _job(service, TINY_CHAT_MODEL, data, n_epochs=1, batch_size=4, learning_rate=1e-2, basis_steps=2)
    page = _open_job(browser, service, job["id"])
    page.get_by_test_id("playground-input").fill(QUESTION)
    page.get_by_test_id("playground-send").click()
    for testid in ("playground-base", "playground-tuned"):
        page.locator(f"[data-testid={testid}][data-done=true]").wait_for(timeout=60_000)
    assert page.get_by_test_id("playground-tuned").inner_text() == _reply(service, job["fine_tuned_model"])
    assert page.get_by_test_id("playground-base").inner_text() == _reply(service, TINY_CHAT_MODEL)
    assert page.js_errors == []


def test_classification_playground_shows_the_fine_tunes_labels(
    browser: Any, service: Service, tmp_path: Path
) -> None:
    job = _job(service, TINY_MODEL, sst2_slice(tmp_path / "train.jsonl", 32), n_epochs=1, batch_size=8)
    page = _open_job(browser, service, job["id"])
    texts = ["a gripping , funny film", "dull and far too long"]
    page.get_by_test_id("playground-input").fill("\n".join(texts))
    page.get_by_test_id("playground-send").click()
    rows = page.locator("[data-testid=playground-predictions] tr")
    rows.nth(1).wait_for()
    expected = httpx.post(
        f"{service.base_url}/v1/predictions",
        headers={"Authorization": f"Bearer {service.api_key}"},
        json={"model": job["fine_tuned_model"], "input": texts},
    ).json()["data"]
    for i, row in enumerate(expected):
        cells = rows.nth(i).locator("td").all_inner_texts()
        assert cells[0] == texts[i] and cells[2] == row["label"]
    assert page.js_errors == []
