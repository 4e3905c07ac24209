"""Public identifiers: a type prefix and random hex, never derived from user input."""

from __future__ import annotations

import secrets


def new_id(prefix: str) -> str:
    """A new id such as `ftjob-3f2a...` (24 hex digits: 96 random bits)."""
    return f"{prefix}-{secrets.token_hex(12)}"
