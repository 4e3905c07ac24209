"""Fixtures of the browser tests: the real service (processes) and a headless Chromium page."""

from __future__ import annotations

import shutil
from collections.abc import Generator, Iterator
from pathlib import Path

import pytest

from tests.web.service import Service, shared_service, stop_shared

CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]
SCREENSHOTS = Path(__file__).resolve().parents[1] / "screenshots"


@pytest.fixture(scope="session")
def service(tmp_path_factory: pytest.TempPathFactory) -> Service:
    """API + worker processes on a temp data dir, shared by every test of the session."""
    return shared_service(tmp_path_factory.mktemp("sgft-service"))


def pytest_sessionfinish(session: pytest.Session) -> None:
    """Stop the shared service once, at the very end (a fixture teardown could run between directories)."""
    stop_shared()


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(
    item: pytest.Item, call: pytest.CallInfo[None]
) -> Generator[None, pytest.TestReport, pytest.TestReport]:
    """Attach the service's log tails to a failing test's report (what the worker was doing)."""
    report = yield
    service = getattr(item, "funcargs", {}).get("service")
    if report.failed and call.when == "call" and isinstance(service, Service):
        for name in ("api", "worker"):
            report.sections.append((f"sgft {name} log (tail)", service.log_tail(name)))
    return report


@pytest.fixture(scope="session")
def browser() -> Iterator[object]:
    """Debian's Chromium driven by Playwright (never a downloaded browser)."""
    if not CHROMIUM.exists() and not shutil.which("chromium"):
        pytest.skip("chromium is not installed at /usr/bin/chromium (apt-get install chromium)")
    sync_api = pytest.importorskip("playwright.sync_api", reason="the playwright package is not installed")
    with sync_api.sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        yield browser
        browser.close()


@pytest.fixture()
def screenshots() -> Path:
    SCREENSHOTS.mkdir(exist_ok=True)
    return SCREENSHOTS


@pytest.fixture(scope="session")
def page_only_url() -> Iterator[str]:
    """Only the page's router (no API) on a uvicorn thread: for testing the JS modules in isolation."""
    import threading
    import time

    import uvicorn
    from fastapi import FastAPI

    from api import web
    from tests.web.service import free_port

    app = FastAPI()
    app.include_router(web.router)
    port = free_port()
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    while not server.started:
        time.sleep(0.05)
    yield f"http://127.0.0.1:{port}"
    server.should_exit = True
    thread.join(timeout=10)
