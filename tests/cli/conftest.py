"""The CLI tests run the real `sgft` command against the same service processes as the browser tests."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.web.service import Service, shared_service, stop_shared


@pytest.fixture(scope="session")
def service(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Service]:
    """API + worker processes on a temp data dir (one per session, shared with tests/web)."""
    yield shared_service(tmp_path_factory.mktemp("sgft-service"))
    stop_shared()
