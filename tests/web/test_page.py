"""End-to-end: the page in headless Chromium against the real API and worker processes."""

from __future__ import annotations

import io
import shutil
import tarfile
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.web.service import TINY_MODEL, Service, sst2_slice

pytestmark = [pytest.mark.browser, pytest.mark.integration]
DOCS_SCREENSHOT = Path(__file__).resolve().parents[2] / "docs" / "screenshot.png"
DEV = Path("/work/shared/data/sst2/dev.jsonl")


def new_page(
    browser: Any, service: Service, width: int = 1280, height: int = 900, signed_in: bool = True
) -> Any:
    context = browser.new_context(viewport={"width": width, "height": height}, accept_downloads=True)
    page = context.new_page()
    page.set_default_timeout(20_000)
    errors: list[str] = []
    page.on("pageerror", lambda exc: errors.append(str(exc)))
    page.js_errors = errors
    page.goto(service.base_url + "/")
    if signed_in:
        page.get_by_test_id("api-key-input").fill(service.api_key)
        page.get_by_test_id("signin-button").click()
        page.get_by_test_id("jobs-table").wait_for()
    return page


def points(page: Any) -> int:
    return int(page.locator("#loss-chart").get_attribute("data-points") or 0)


def test_sign_in_is_checked_kept_and_signed_out(browser: Any, service: Service) -> None:
    page = new_page(browser, service, signed_in=False)
    page.get_by_test_id("api-key-input").fill("sgft-000000000000-not-a-real-key")
    page.get_by_test_id("signin-button").click()
    page.locator("#signin-error").wait_for()  # shown once the API has answered 401
    assert "not valid" in page.locator("#signin-error").inner_text()
    page.get_by_test_id("api-key-input").fill(service.api_key)
    page.get_by_test_id("signin-button").click()
    page.get_by_test_id("jobs-table").wait_for()
    page.reload()  # the key is kept in localStorage
    page.get_by_test_id("jobs-table").wait_for()
    page.get_by_test_id("signout").click()
    page.get_by_test_id("signin-button").wait_for()
    assert page.evaluate("localStorage.getItem('sgft.apiKey')") is None
    assert page.js_errors == []


def test_upload_train_watch_curve_and_download(
    browser: Any, service: Service, tmp_path: Path, screenshots: Path
) -> None:
    """Upload (a bad file shows its lines), start a job, see the loss curve grow, download the delta."""
    page = new_page(browser, service)
    page.get_by_test_id("nav-new").click()
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"text": "fine", "label": 1}\n{"text": "no label"}\nnot json\n')
    page.get_by_test_id("upload-input").set_input_files(str(bad))
    page.get_by_test_id("upload-button").click()
    errors = page.get_by_test_id("upload-errors")
    errors.wait_for()
    items = errors.locator("li")
    assert items.count() == 2
    assert items.nth(0).get_attribute("data-line") == "2" and "label" in items.nth(0).inner_text()
    assert items.nth(1).get_attribute("data-line") == "3"

    valid = sst2_slice(tmp_path / "sst2-valid.jsonl", 32, offset=1000)
    page.get_by_test_id("upload-input").set_input_files(str(valid))
    page.get_by_test_id("upload-button").click()
    page.wait_for_function("document.querySelector('#upload-result')?.dataset.fileId")
    valid_id = page.locator("#upload-result").get_attribute("data-file-id")
    train = sst2_slice(tmp_path / "sst2-64.jsonl", 64)
    page.get_by_test_id("upload-input").set_input_files(str(train))
    page.get_by_test_id("upload-button").click()
    page.wait_for_function(f"document.querySelector('#upload-result')?.dataset.fileId !== '{valid_id}'")
    assert errors.is_hidden()
    train_id = page.locator("#upload-result").get_attribute("data-file-id")
    assert page.locator("#training-file").input_value() == ""  # nothing preselected
    page.get_by_test_id("create-button").click()  # without a training file: an inline error, no request
    page.locator("#create-error").wait_for()
    assert "Choose a training file" in page.locator("#create-error").inner_text()
    listed = " ".join(page.locator("#files-list li").all_inner_texts())
    assert train_id in listed and valid_id in listed  # the datasets list tells files apart by id
    page.locator("#training-file").select_option(train_id)

    page.locator("#model").select_option(TINY_MODEL)
    # methods and bounds come from the service's hyper-parameter table
    methods = page.locator("#method option").evaluate_all("options => options.map(o => o.value)")
    assert methods == ["sparsegrad", "lora", "full", "meprop"]
    assert page.locator("#n-epochs").get_attribute("max") == "50"
    assert page.locator("#lr-multiplier").get_attribute("min") == "0.01"
    assert "Empty: " in (page.locator("#batch-size").get_attribute("title") or "")
    page.locator("#method").select_option("lora")  # the table marks which methods take a density
    assert page.locator("#density").is_hidden()
    page.locator("#method").select_option("meprop")
    assert page.locator("#density").is_visible()
    page.locator("#method").select_option("sparsegrad")
    page.locator("#validation-file").select_option(valid_id)
    page.locator("#n-epochs").fill("20")  # long enough to usually watch the curve grow across polls
    page.locator("#density").fill("0.05")
    page.locator("details summary").click()
    page.locator("#batch-size").fill("8")
    page.locator("#suffix").fill("sst2-web")
    page.get_by_test_id("create-button").click()
    page.wait_for_url("**/#/jobs/ftjob-*")
    job_id = page.locator("#job-view").get_attribute("data-job-id")

    # The curve gets points as metrics events arrive, then more points (it grows while we watch).
    page.wait_for_function(
        "Number(document.querySelector('#loss-chart')?.dataset.points) >= 1", timeout=120_000
    )
    first = points(page)
    # It grows while we watch, unless the last points arrived in the same poll as the first ones.
    page.wait_for_function(
        f"Number(document.querySelector('#loss-chart')?.dataset.points) > {first}"
        " || document.querySelector('#job-view')?.dataset.live === 'false'",
        timeout=120_000,
    )
    page.wait_for_function(
        "document.querySelector('#job-view [data-testid=job-status]')?.textContent === 'succeeded'",
        timeout=180_000,
    )
    page.wait_for_selector("#job-view[data-live=false]")  # the last poll has drawn every event
    final = points(page)
    metrics = [
        e
        for e in service.api("GET", f"/v1/fine_tuning/jobs/{job_id}/events?limit=1000")["data"]
        if e["type"] == "metrics"
    ]
    # One point per (series, step): a step logged twice (e.g. by the eval) is one point on the curve.
    expected = len({(k, e["data"]["step"]) for e in metrics for k in e["data"] if k.endswith("loss")})
    # Every metrics event is on the curve; on an idle machine the tiny job may finish within one poll.
    assert final == expected >= first and expected >= 2
    assert "train_loss" in (page.locator("#loss-chart").get_attribute("data-series") or "")
    assert page.locator("#events li").count() > 0
    assert page.locator("#checkpoints-body tr").count() >= 1
    losses = [r.split("\t")[1] for r in page.locator("#checkpoints-body tr").all_inner_texts()]
    assert all(loss != "—" for loss in losses), losses  # each checkpoint shows the train loss at its step
    assert "train_loss" in (page.locator("#loss-chart").get_attribute("data-smoothed") or "")
    assert "0.05" in page.locator("#hyperparameters").inner_text()
    page.screenshot(path=str(screenshots / "job.png"))
    DOCS_SCREENSHOT.parent.mkdir(exist_ok=True)
    shutil.copyfile(screenshots / "job.png", DOCS_SCREENSHOT)

    # Download through the page (a fetch with the Bearer header -> blob) equals the stored file.
    button = page.get_by_test_id("download-button").first
    file_id = button.get_attribute("data-file-id")
    with page.expect_download() as info:
        button.click()
    saved = tmp_path / "download"
    info.value.save_as(saved)
    stored = httpx.get(
        f"{service.base_url}/v1/files/{file_id}/content",
        headers={"Authorization": f"Bearer {service.api_key}"},
        timeout=60,
    ).content
    assert saved.read_bytes() == stored and len(stored) > 0
    meta = service.api("GET", f"/v1/files/{file_id}")
    assert info.value.suggested_filename == meta["filename"]
    if meta["filename"].endswith(".tar.gz"):
        names = tarfile.open(fileobj=io.BytesIO(stored)).getnames()
        assert any(n.endswith("sparsegrad_delta.safetensors") for n in names), names

    # Merge from the page: a real worker merges; the button follows merge_status, then becomes a link.
    page.get_by_test_id("merge-button").click()
    link = page.get_by_test_id("merged-download")
    link.wait_for(timeout=180_000)
    merged = service.api("GET", f"/v1/fine_tuning/jobs/{job_id}")
    assert merged["merge_status"] == "succeeded"
    assert link.get_attribute("data-file-id") == merged["result_files"][-1]
    assert page.js_errors == []


def test_cancel_a_running_job_from_its_page(browser: Any, service: Service, tmp_path: Path) -> None:
    file_id = service.upload(sst2_slice(tmp_path / "sst2-256.jsonl", 256))
    job = service.create_job(file_id, n_epochs=50, batch_size=8)
    page = new_page(browser, service)
    row = page.locator(f"tr[data-job-id='{job['id']}']")
    row.wait_for()
    row.get_by_test_id("job-link").click()
    page.wait_for_function(
        "document.querySelector('#job-view [data-testid=job-status]')?.textContent === 'running'",
        timeout=120_000,
    )
    # Every status the page shows from here on (the answer to the click is drawn at once).
    page.evaluate(
        """() => {
          window.shownStatuses = [];
          const view = document.querySelector('#job-view');
          new MutationObserver(() => window.shownStatuses.push(
            view.querySelector('[data-testid=job-status]')?.textContent)).observe(
            view, { subtree: true, childList: true, characterData: true });
        }"""
    )
    page.get_by_test_id("cancel-button").click()
    page.wait_for_function(
        "document.querySelector('#job-view [data-testid=job-status]')?.textContent === 'cancelled'",
        timeout=60_000,
    )
    assert "cancelling" in page.evaluate("window.shownStatuses")  # the state the cancel leads to
    assert page.get_by_test_id("cancel-button").is_disabled()
    page.get_by_test_id("nav-jobs").click()
    assert page.locator(f"tr[data-job-id='{job['id']}']").get_attribute("data-status") == "cancelled"
    assert service.wait_job(job["id"], {"cancelled"})["status"] == "cancelled"
    assert page.js_errors == []


def test_phone_width_scrolls_the_table_not_the_page(
    browser: Any, service: Service, screenshots: Path
) -> None:
    page = new_page(browser, service, width=390, height=844)
    page.locator("tr[data-testid=job-row]").first.wait_for()
    wrap = page.locator(".table-wrap").first
    assert wrap.evaluate("el => el.scrollWidth > el.clientWidth")  # the table scrolls inside its box
    assert page.evaluate("document.documentElement.scrollWidth") <= 390  # the page itself does not
    page.screenshot(path=str(screenshots / "phone-jobs.png"))
    page.get_by_test_id("nav-new").click()
    page.locator("#job-form").wait_for()
    assert page.evaluate("document.documentElement.scrollWidth") <= 390
    assert page.js_errors == []
