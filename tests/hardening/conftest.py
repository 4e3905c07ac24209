"""Shared fixtures: the API on SQLite with two tenants (tests/service)."""

from tests.service.api_fixtures import api  # noqa: F401  (fixture)
