"""The CLI tests run the real `sgft` command against the same service processes as the browser tests."""

from __future__ import annotations

import pytest

from tests.web.service import Service, shared_service, stop_shared


@pytest.fixture(scope="session")
def service(tmp_path_factory: pytest.TempPathFactory) -> Service:
    """API + worker processes on a temp data dir (one per session, shared with tests/web)."""
    return shared_service(tmp_path_factory.mktemp("sgft-service"))


def pytest_sessionfinish(session: pytest.Session) -> None:
    """Stop the shared service once, at the very end (a fixture teardown could run between directories)."""
    stop_shared()
