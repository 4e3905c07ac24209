"""The page against a stand-in API (Playwright routes): the form, merge, smoothing, checkpoints, datasets."""

from __future__ import annotations

import json
from typing import Any

import pytest

pytestmark = pytest.mark.browser

JOB = "ftjob-mock"
FILES = [
    {
        "id": "file-train0000001",
        "filename": "data.jsonl",
        "bytes": 100,
        "created_at": 1000,
        "purpose": "fine-tune",
    },
    {
        "id": "file-valid0000002",
        "filename": "data.jsonl",
        "bytes": 50,
        "created_at": 2000,
        "purpose": "fine-tune",
    },
]


class MockApi:
    """Answers /v1/... from dicts the test changes; records the requests made."""

    def __init__(self) -> None:
        self.job: dict[str, Any] = {
            "id": JOB,
            "status": "succeeded",
            "model": "tiny",
            "method": {"type": "sparsegrad"},
            "created_at": 1000,
            "finished_at": 1100,
            "result_files": ["file-delta"],
            "merge_status": None,
            "progress": {"step": 30, "total_steps": 30},
            "hyperparameters": {},
            "seed": 1,
        }
        self.events: list[dict[str, Any]] = []
        self.checkpoints: list[dict[str, Any]] = []
        self.requests: list[tuple[str, str]] = []

    def handle(self, route: Any, request: Any) -> None:
        path = request.url.split("?")[0].split("/v1/", 1)[1]
        self.requests.append((request.method, path))
        body: Any = {"data": [], "has_more": False}
        if path == "models":
            body = {"data": [{"id": "tiny"}]}
        elif path == "files":
            body = {"data": FILES}
        elif path.startswith("files/"):
            body = {"id": path.split("/")[1], "filename": "model.tar.gz", "bytes": 10}
        elif path == f"fine_tuning/jobs/{JOB}/merge":
            self.job["merge_status"] = "queued"
            body = self.job
        elif path == f"fine_tuning/jobs/{JOB}":
            body = self.job
        elif path == f"fine_tuning/jobs/{JOB}/events":
            body = {"data": self.events, "has_more": False}
        elif path == f"fine_tuning/jobs/{JOB}/checkpoints":
            body = {"data": self.checkpoints, "has_more": False}
        route.fulfill(status=200, content_type="application/json", body=json.dumps(body))


@pytest.fixture()
def mock() -> MockApi:
    return MockApi()


@pytest.fixture()
def open_page(browser: Any, page_only_url: str, mock: MockApi) -> Any:
    pages: list[Any] = []

    def go(hash_: str) -> Any:
        page = browser.new_page(viewport={"width": 1280, "height": 900})
        page.set_default_timeout(10_000)
        page.js_errors = []
        page.on("pageerror", lambda exc: page.js_errors.append(str(exc)))
        page.add_init_script("localStorage.setItem('sgft.apiKey', 'sgft-test')")
        page.route("**/v1/**", mock.handle)
        page.goto(f"{page_only_url}/{hash_}")
        pages.append(page)
        return page

    yield go
    for page in pages:
        page.close()


def test_no_training_file_is_preselected(open_page: Any, mock: MockApi) -> None:
    page = open_page("#/new")
    page.wait_for_function("document.querySelectorAll('#training-file option').length === 3")
    assert page.locator("#training-file").input_value() == ""
    assert "choose a file" in page.locator("#training-file option").first.inner_text()
    page.get_by_test_id("create-button").click()
    error = page.locator("#create-error")
    error.wait_for()
    assert "Choose a training file" in error.inner_text()
    assert ("POST", "fine_tuning/jobs") not in mock.requests
    assert page.js_errors == []


def test_datasets_list_shows_ids(open_page: Any) -> None:
    page = open_page("#/new")
    page.locator("#files-list li[data-file-id]").first.wait_for()
    texts = page.locator("#files-list li").all_inner_texts()
    assert len(texts) == 2
    assert "file-valid0000002" in texts[0] and "file-train0000001" in texts[1]  # same names, told apart


def test_merge_button_shows_progress_retry_and_the_merged_file(open_page: Any, mock: MockApi) -> None:
    page = open_page(f"#/jobs/{JOB}")
    merge = page.get_by_test_id("merge-button")
    merge.wait_for()
    assert merge.inner_text() == "Merge" and merge.is_enabled()
    page.wait_for_selector("#job-view[data-live=false]")  # polling stopped: the job is finished
    merge.click()
    page.wait_for_function(
        "document.querySelector('[data-testid=merge-button]')?.textContent === 'Merge queued…'"
    )
    assert ("POST", f"fine_tuning/jobs/{JOB}/merge") in mock.requests
    assert page.get_by_test_id("merge-button").is_disabled()
    mock.job["merge_status"] = "running"
    page.wait_for_function("document.querySelector('[data-testid=merge-button]')?.textContent === 'Merging…'")
    mock.job["merge_status"] = "failed"
    page.wait_for_function(
        "document.querySelector('[data-testid=merge-button]')?.textContent.includes('retry')"
    )
    assert page.get_by_test_id("merge-button").is_enabled()
    page.get_by_test_id("merge-button").click()  # the retry polls again
    page.wait_for_function(
        "document.querySelector('[data-testid=merge-button]')?.textContent === 'Merge queued…'"
    )
    mock.job["merge_status"] = "succeeded"
    mock.job["result_files"] = ["file-delta", "file-merged"]
    link = page.get_by_test_id("merged-download")
    link.wait_for()
    assert link.get_attribute("data-file-id") == "file-merged"
    page.wait_for_selector("#job-view[data-live=false]")
    assert page.js_errors == []


def metrics_event(i: int, step: int, loss: float) -> dict[str, Any]:
    return {
        "id": f"ev-{i}",
        "type": "metrics",
        "created_at": 1000 + i,
        "data": {"step": step, "train_loss": loss},
    }


def test_checkpoints_show_the_train_loss_at_their_step(open_page: Any, mock: MockApi) -> None:
    mock.events = [
        metrics_event(i, step, loss) for i, (step, loss) in enumerate([(10, 0.9), (19, 0.7), (30, 0.5)])
    ]
    mock.checkpoints = [
        {"id": "ck1", "step_number": 20, "created_at": 1050, "metrics": {"step": 20, "valid_loss": 0.6}},
        {"id": "ck2", "step_number": 30, "created_at": 1090, "metrics": {"step": 30, "train_loss": 0.45}},
    ]
    page = open_page(f"#/jobs/{JOB}")
    page.wait_for_selector("#job-view[data-live=false]")
    rows = [r.split("\t")[:3] for r in page.locator("#checkpoints-body tr").all_inner_texts()]
    assert rows == [
        ["20", "0.7000", "0.6000"],
        ["30", "0.4500", "—"],
    ]  # nearest event's; its own when it has one
