"""Suite-wide switches: slow tests opt in with SGFT_SLOW=1; GPU tests run only where CUDA is present; tests
that start real servers, PostgreSQL or Redis are marked `integration`, those in Chromium `browser`, and
those that train a released model (MiniLM, minutes of bf16 on this CPU) mark themselves `realmodel`, so that
`make test-fast` (-m "not integration and not browser and not realmodel") runs the rest."""

from __future__ import annotations

import os
from pathlib import Path

import pytest


def _cuda_available() -> bool:
    try:
        import torch
    except ImportError:
        return False
    return bool(torch.cuda.is_available())


# Folders whose every test runs real service processes (sgft serve, Celery workers, Docker) or a browser.
INTEGRATION_DIRS = ("hardening", "cli", "compose", "deploy")
BROWSER_DIRS = ("web",)
# Fixtures that reach a real PostgreSQL (tests/service/conftest.py).
POSTGRES_FIXTURES = {"pg_url", "pg_schema", "pg_api"}


def _folder(item: pytest.Item) -> str:
    parts = item.path.relative_to(Path(__file__).parent).parts
    return parts[0] if len(parts) > 1 else ""


def _mark_kind(item: pytest.Item) -> None:
    folder = _folder(item)
    if folder in BROWSER_DIRS:
        item.add_marker(pytest.mark.browser)
    callspec = getattr(item, "callspec", None)
    postgres = callspec is not None and callspec.params.get("db_url") == "postgresql"
    fixtures = set(getattr(item, "fixturenames", ()))
    if folder in INTEGRATION_DIRS or postgres or fixtures & POSTGRES_FIXTURES:
        item.add_marker(pytest.mark.integration)


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    run_slow = os.environ.get("SGFT_SLOW") == "1"
    has_gpu: bool | None = None
    for item in items:
        _mark_kind(item)
        if "slow" in item.keywords and not run_slow:
            item.add_marker(pytest.mark.skip(reason="slow test: set SGFT_SLOW=1 to run it"))
        if "gpu" in item.keywords:
            if has_gpu is None:
                has_gpu = _cuda_available()
            if not has_gpu:
                item.add_marker(pytest.mark.skip(reason="needs a CUDA device"))
