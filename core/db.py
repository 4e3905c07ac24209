"""Database engine and sessions: SQLite (WAL, busy timeout, immediate transactions) or PostgreSQL."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from functools import lru_cache
from pathlib import Path
from typing import Any

from sqlalchemy import Engine, create_engine, event, inspect
from sqlalchemy.engine import make_url
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.orm import Session, sessionmaker
from sqlalchemy.pool import NullPool

from core.settings import get_settings


def make_engine(url: str) -> Engine:
    """An engine for `url`. SQLite gets WAL + a 30 s busy timeout; other databases get pool_pre_ping."""
    parsed = make_url(url)
    if parsed.get_backend_name() != "sqlite":
        # Up to 40 connections: as many as the API's thread pool has threads (anyio's default, 40). With
        # fewer, 64 concurrent requests deadlocked for pool_timeout: every thread waited for a connection
        # while the connections sat in finished requests whose session teardown waited for a thread.
        return create_engine(url, pool_pre_ping=True, pool_size=10, max_overflow=30)
    if parsed.database and parsed.database != ":memory:":
        Path(parsed.database).parent.mkdir(parents=True, exist_ok=True)
    engine = create_engine(url, connect_args={"check_same_thread": False, "timeout": 30})

    @event.listens_for(engine, "connect")
    def _on_connect(dbapi_conn: Any, _record: Any) -> None:
        # We emit BEGIN ourselves (below): pysqlite's implicit BEGIN is deferred, and a deferred
        # transaction that later writes can fail with SQLITE_BUSY without waiting on the busy timeout.
        dbapi_conn.isolation_level = None
        cur = dbapi_conn.cursor()
        cur.execute("PRAGMA journal_mode=WAL")
        cur.execute("PRAGMA busy_timeout=30000")
        cur.execute("PRAGMA foreign_keys=ON")
        cur.execute("PRAGMA synchronous=NORMAL")
        cur.close()

    # Every transaction takes the write lock up front, so callers must keep transactions short (commit
    # before streaming or other slow work); waiting writers queue on the busy timeout instead of failing.
    @event.listens_for(engine, "begin")
    def _on_begin(conn: Any) -> None:
        conn.exec_driver_sql("BEGIN IMMEDIATE")

    return engine


class DatabaseNotReady(Exception):
    """The database a command needs is missing, unreachable or not migrated; the message says where it
    looked and what to do."""


def safe_url(url: str) -> str:
    """`url` with its password hidden (for messages)."""
    return make_url(url).render_as_string(hide_password=True)


def require_schema(url: str, tables: tuple[str, ...] = ("tenants", "api_keys")) -> None:
    """Raise DatabaseNotReady unless the database at `url` exists and has `tables`. Creates nothing: a
    missing SQLite file is reported, never made (connecting would create an empty one)."""
    parsed = make_url(url)
    where = safe_url(url)
    advice = (
        "run `sgft migrate` to create it, or use the server's settings: the same SGFT_DATA_DIR "
        "(or SGFT_DATABASE_URL) as the `sgft run` / `sgft serve` that uses it"
    )
    if parsed.get_backend_name() == "sqlite":
        if not parsed.database or parsed.database == ":memory:":
            raise DatabaseNotReady(f"the database {where} is in memory: it holds no service data")
        if not Path(parsed.database).is_file():
            raise DatabaseNotReady(f"no database at {Path(parsed.database).resolve()} ({where}); {advice}")
    try:
        engine = create_engine(url, poolclass=NullPool)
    except (SQLAlchemyError, ImportError) as exc:  # an unknown dialect, or its driver is not installed
        raise DatabaseNotReady(f"cannot use the database URL {where}: {exc}") from None
    try:
        present = set(inspect(engine).get_table_names())
    except SQLAlchemyError as exc:
        reason = str(getattr(exc, "orig", None) or exc).strip().splitlines()[0]
        raise DatabaseNotReady(f"cannot read the database at {where}: {reason}") from None
    finally:
        engine.dispose()
    missing = [t for t in tables if t not in present]
    if missing:
        raise DatabaseNotReady(
            f"the database at {where} is not set up (no table {', '.join(missing)}); {advice}"
        )


@lru_cache(maxsize=8)
def get_engine(url: str | None = None) -> Engine:
    """The process-wide engine for `url` (default: the settings' database)."""
    return make_engine(url or get_settings().database_url)


@lru_cache(maxsize=8)
def _sessionmaker(engine: Engine) -> sessionmaker[Session]:
    # Built once per engine: every sessionmaker() makes a new Session subclass (about 0.4 ms on the VM).
    return sessionmaker(bind=engine, expire_on_commit=False)


def get_sessionmaker(url: str | None = None) -> sessionmaker[Session]:
    """A session factory bound to the engine for `url`; objects stay readable after commit."""
    return _sessionmaker(get_engine(url))


def ping_database(url: str | None = None) -> None:
    """Raise unless the database answers `SELECT 1`. Outside any transaction (no write lock on SQLite), on a
    pooled connection that this call alone uses and always returns."""
    raw = get_engine(url).raw_connection()
    try:
        cursor = raw.cursor()
        cursor.execute("SELECT 1")
        cursor.fetchall()
        cursor.close()
    finally:
        raw.close()


@contextmanager
def session_scope(url: str | None = None) -> Iterator[Session]:
    """A session that is rolled back on error and always closed (callers commit)."""
    session = get_sessionmaker(url)()
    try:
        yield session
    except BaseException:
        session.rollback()
        raise
    finally:
        session.close()
