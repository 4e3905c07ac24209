"""Dependencies, declared once as `Annotated` aliases."""

from __future__ import annotations

from collections.abc import Iterator
from functools import lru_cache
from typing import Annotated

from fastapi import Depends, Request
from sqlalchemy.orm import Session
from starlette.concurrency import run_in_threadpool

from api.errors import APIError
from api.keycache import KeyCache
from core.db import get_sessionmaker, session_scope
from core.keys import verify_key
from core.models import ApiKey
from core.settings import Settings
from core.storage import Storage


async def get_app_settings(request: Request) -> Settings:
    # async: FastAPI runs a plain `def` dependency in the thread pool, a hop that costs more than this.
    settings: Settings = request.app.state.settings
    return settings


SettingsDep = Annotated[Settings, Depends(get_app_settings)]


def get_db(settings: SettingsDep) -> Iterator[Session]:
    session = get_sessionmaker(settings.database_url)()
    try:
        yield session
    finally:
        session.close()


SessionDep = Annotated[Session, Depends(get_db)]


@lru_cache(maxsize=4)
def _storage(url: str) -> Storage:
    return Storage(url)


def get_storage(settings: SettingsDep) -> Storage:
    return _storage(settings.artifacts_url)


StorageDep = Annotated[Storage, Depends(get_storage)]


def _verify(settings: Settings, token: str) -> ApiKey | None:
    """Check `token` against the database in a short session of its own (closed before the route runs)."""
    with session_scope(settings.database_url) as session:
        return verify_key(session, token, settings.secret_key)


async def current_key(request: Request, settings: SettingsDep) -> ApiKey:
    """The caller's API key from `Authorization: Bearer <key>`; 401 otherwise.

    A key in the cache (verified by the database less than its ttl ago) costs no thread hop and no query.
    """
    header = request.headers.get("authorization", "")
    scheme, _, token = header.partition(" ")
    token = token.strip()
    if scheme.lower() != "bearer" or not token:
        raise APIError(
            401,
            "Missing API key: send `Authorization: Bearer <key>` (create one with `sgft keys create`).",
            code="missing_api_key",
        )
    cache: KeyCache | None = getattr(request.app.state, "key_cache", None)
    key = cache.get(token) if cache is not None else None
    if key is not None:
        return key
    key = await run_in_threadpool(_verify, settings, token)
    if key is None:
        raise APIError(401, "Incorrect or revoked API key provided.", code="invalid_api_key")
    if cache is not None:
        cache.put(token, key)
    return key


KeyDep = Annotated[ApiKey, Depends(current_key)]
