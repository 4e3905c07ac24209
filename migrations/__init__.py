"""Alembic migrations of the service database (`sgft migrate` runs them)."""

from __future__ import annotations

from pathlib import Path

from alembic.config import Config

HERE = Path(__file__).resolve().parent


def alembic_config(database_url: str | None = None) -> Config:
    """An Alembic Config for this folder; `database_url` overrides the settings' URL."""
    cfg = Config(str(HERE / "alembic.ini"))
    cfg.set_main_option("script_location", str(HERE))
    if database_url:
        cfg.attributes["database_url"] = database_url
    return cfg


def upgrade(database_url: str | None = None) -> None:
    """Bring the database to the latest revision."""
    from alembic import command

    command.upgrade(alembic_config(database_url), "head")
