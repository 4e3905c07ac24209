"""The compose tests run only through `make test-compose` (SGFT_COMPOSE=1): they build images and start
containers. Without a Docker engine they skip, except under CI=true, where they fail."""

from __future__ import annotations

import os

import pytest

from tests.compose.project import engine_error


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    compose_items = [item for item in items if "compose" in item.keywords]
    if not compose_items:
        return
    if os.environ.get("SGFT_COMPOSE") != "1":
        for item in compose_items:
            item.add_marker(pytest.mark.skip(reason="containers: run with `make test-compose`"))
        return
    error = engine_error()
    if error is None:
        return
    if os.environ.get("CI") == "true":
        raise pytest.UsageError(f"CI=true and {error}: the compose tests cannot run")
    for item in compose_items:
        item.add_marker(pytest.mark.skip(reason=error))
