"""Run the API's hot read statements without a thread hop where the database allows it.

`reader(url)` gives an async `fetch(statement, params) -> rows` (plain tuples, in the statement's column
order):

- PostgreSQL (psycopg2 URLs): psycopg2's asynchronous connections, driven by the asyncio event loop
  (`add_reader` on the socket), from a small pool per event loop. On the 2-core VM, handing a blocking
  query to the thread pool cost more CPU (~0.2-0.3 ms: futexes, the loop's self-pipe, anyio's bookkeeping)
  than the query itself. An asynchronous connection is in autocommit: each SELECT is one round trip and
  sees everything committed before it started (a poll never reads an old snapshot). A statement built once
  (`Static`) is PREPAREd on each connection the first time that connection runs it, so PostgreSQL parses
  it once per connection and can reuse its plan (needs a direct connection or a session-mode pooler, as
  the compose deployment has).
- Anything else (SQLite): a connection of the main engine in the thread pool, as before.

A connection the server dropped (restart, failover) fails its query; a read is idempotent, so it is retried
once on a fresh connection, after closing the other idle ones (they are likely dead too); if that fails as
well the error is SQLAlchemy's OperationalError, which the API answers with 503 like any other database
outage.
"""

from __future__ import annotations

import asyncio
import itertools
import weakref
from collections.abc import Awaitable, Callable, Mapping, Sequence
from functools import lru_cache
from typing import Any

import anyio.to_thread
import psycopg2
import psycopg2.extensions
from sqlalchemy import Select, exc
from sqlalchemy.dialects.postgresql.psycopg2 import PGDialect_psycopg2
from sqlalchemy.engine import make_url

from core.db import get_engine

Rows = Sequence[tuple[Any, ...]]

POOL_SIZE = 10  # connections per event loop (per API process)
_PYFORMAT = PGDialect_psycopg2()  # %(name)s, for statements built per request
_NUMBERED = PGDialect_psycopg2(paramstyle="numeric_dollar")  # $1, $2, for PREPARE
_names = itertools.count(1)


class Static:
    """A statement built once, at import, whose values are all `bindparam()`s: compiled once, and on
    PostgreSQL prepared once per connection."""

    def __init__(self, statement: Select[Any]) -> None:
        self.statement = statement
        numbered = statement.compile(dialect=_NUMBERED)
        self.name = f"sgft_read_{next(_names)}"
        self.prepare = f"PREPARE {self.name} AS {numbered.string}"
        self.params = tuple(numbered.positiontup or ())
        self.execute = f"EXECUTE {self.name} ({', '.join(['%s'] * len(self.params))})"


Statement = Static | Select[Any]
Fetch = Callable[[Statement, Mapping[str, Any]], Awaitable[Rows]]


async def _wait(conn: Any) -> None:
    """Drive an asynchronous psycopg2 connection until its current operation is done."""
    loop = asyncio.get_running_loop()
    fd = conn.fileno()
    while True:
        state = conn.poll()
        if state == psycopg2.extensions.POLL_OK:
            return
        done = loop.create_future()
        if state == psycopg2.extensions.POLL_READ:
            loop.add_reader(fd, done.set_result, None)
            try:
                await done
            finally:
                loop.remove_reader(fd)
        elif state == psycopg2.extensions.POLL_WRITE:
            loop.add_writer(fd, done.set_result, None)
            try:
                await done
            finally:
                loop.remove_writer(fd)
        else:  # pragma: no cover - psycopg2 has no other state
            raise psycopg2.OperationalError(f"unexpected poll state {state}")


class _Connection:
    """An asynchronous psycopg2 connection and the names of the statements prepared on it."""

    def __init__(self, raw: Any) -> None:
        self.raw = raw
        self.prepared: set[str] = set()

    async def run(self, sql: str, params: Sequence[Any] | Mapping[str, Any]) -> Rows:
        cursor = self.raw.cursor()
        try:
            cursor.execute(sql, params)
            await _wait(self.raw)
            return cursor.fetchall() if cursor.description is not None else []
        finally:
            cursor.close()

    async def fetch(self, statement: Statement, params: Mapping[str, Any]) -> Rows:
        if not isinstance(statement, Static):  # built for this request: its own values + `params`
            compiled = statement.compile(dialect=_PYFORMAT)
            return await self.run(compiled.string, {**compiled.params, **params})
        if statement.name not in self.prepared:
            await self.run(statement.prepare, ())
            self.prepared.add(statement.name)
        return await self.run(statement.execute, [params[name] for name in statement.params])


class PgPool:
    """At most `size` asynchronous psycopg2 connections of one event loop, reused last-in first-out."""

    def __init__(self, url: str, size: int = POOL_SIZE) -> None:
        cargs, cparams = _PYFORMAT.create_connect_args(make_url(url))
        self._connect_args = (tuple(cargs), dict(cparams))
        self._idle: list[_Connection] = []
        self._slots = asyncio.Semaphore(size)

    async def _connect(self) -> _Connection:
        args, kwargs = self._connect_args
        raw = psycopg2.connect(*args, **kwargs, async_=True)
        try:
            await _wait(raw)
        except BaseException:
            raw.close()
            raise
        return _Connection(raw)

    async def fetch(self, statement: Statement, params: Mapping[str, Any]) -> Rows:
        """Rows of one SELECT; retried once on a new connection if a pooled one turns out dead."""
        async with self._slots:
            for retry in (True, False):
                pooled = bool(self._idle)
                try:
                    conn = self._idle.pop() if pooled else await self._connect()
                except (psycopg2.OperationalError, psycopg2.InterfaceError) as error:
                    raise exc.OperationalError(None, None, error) from error
                try:
                    rows = await conn.fetch(statement, params)
                except (psycopg2.OperationalError, psycopg2.InterfaceError) as error:
                    conn.raw.close()
                    if pooled and retry:  # the server dropped it (restart?): the idle ones went too
                        self.close()
                        continue
                    raise exc.OperationalError(None, None, error) from error
                except BaseException:  # a failed statement, or cancelled mid-query: never reuse it
                    conn.raw.close()
                    raise
                self._idle.append(conn)
                return rows
        raise AssertionError("unreachable")  # pragma: no cover

    def close(self) -> None:
        """Close the idle connections (those in use are closed by their errors or on exit)."""
        while self._idle:
            self._idle.pop().raw.close()


_pools: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, dict[str, PgPool]] = weakref.WeakKeyDictionary()


def _pool(url: str) -> PgPool:
    by_url = _pools.setdefault(asyncio.get_running_loop(), {})
    pool = by_url.get(url)
    if pool is None:
        pool = by_url[url] = PgPool(url)
    return pool


@lru_cache(maxsize=8)
def reader(url: str) -> Fetch:
    """An async `fetch(statement, params)` for the database at `url` (see the module docstring)."""
    parsed = make_url(url)
    if parsed.get_backend_name() == "postgresql" and parsed.get_driver_name() == "psycopg2":

        async def fetch_pg(statement: Statement, params: Mapping[str, Any]) -> Rows:
            return await _pool(url).fetch(statement, params)

        return fetch_pg

    async def fetch_in_thread(statement: Statement, params: Mapping[str, Any]) -> Rows:
        query = statement.statement if isinstance(statement, Static) else statement

        def run() -> Rows:
            with get_engine(url).connect() as conn:
                return [tuple(row) for row in conn.execute(query, dict(params))]

        return await anyio.to_thread.run_sync(run)

    return fetch_in_thread
