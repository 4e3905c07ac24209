"""Operations: /healthz (alive), /readyz (database and broker reachable), /metrics (Prometheus)."""

from __future__ import annotations

import asyncio

from fastapi import APIRouter, Response
from fastapi.responses import JSONResponse, PlainTextResponse
from sqlalchemy import text
from starlette.concurrency import run_in_threadpool

from api import metrics
from api.deps import SessionDep, SettingsDep
from core.queue import ping_broker

router = APIRouter(tags=["operations"])


@router.get("/healthz")
def healthz() -> dict[str, str]:
    return {"status": "ok"}


@router.get("/readyz")
async def readyz(session: SessionDep, settings: SettingsDep) -> JSONResponse:
    """200 when the database and the broker answer within a few seconds; 503 naming what is down."""
    checks: dict[str, str] = {}

    def db() -> None:
        session.execute(text("SELECT 1"))

    for name, probe in (("database", db), ("broker", lambda: ping_broker(settings, timeout=3.0))):
        try:
            await asyncio.wait_for(run_in_threadpool(probe), timeout=5.0)
            checks[name] = "ok"
        except Exception as exc:  # reported, never raised: a probe must answer
            checks[name] = f"unavailable: {type(exc).__name__}"
    ok = all(v == "ok" for v in checks.values())
    return JSONResponse(
        {"status": "ok" if ok else "unavailable", "checks": checks}, status_code=200 if ok else 503
    )


@router.get("/metrics", response_class=PlainTextResponse)  # documented as text/plain in the schema
def prometheus(session: SessionDep) -> Response:
    return metrics.render(session)
