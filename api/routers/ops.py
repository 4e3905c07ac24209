"""Operations: /healthz (alive), /readyz (database and broker reachable), /metrics (Prometheus)."""

from __future__ import annotations

import asyncio
from typing import Any

from fastapi import APIRouter, Response
from fastapi.responses import JSONResponse, PlainTextResponse
from sqlalchemy import text
from starlette.concurrency import run_in_threadpool

from api import metrics
from api.deps import SessionDep, SettingsDep
from api.errors import STATUS_MEANING, error_responses
from api.schemas import Readiness
from core.queue import ping_broker

router = APIRouter(tags=["operations"])
# A NUL in the query or headers is a 400 on every route (api.nonul). The errors of /metrics are JSON though
# its answer is text: declared by reference (a model would be documented under the route's text/plain).
JSON_ERROR = {"application/json": {"schema": {"$ref": "#/components/schemas/ErrorResponse"}}}
METRICS_ERRORS: dict[int | str, dict[str, Any]] = {
    code: {"description": STATUS_MEANING[code], "content": JSON_ERROR} for code in (400, 503)
}
UNREADY: dict[int | str, dict[str, Any]] = {
    503: {"model": Readiness, "description": "The database or the broker does not answer"}
}


@router.get("/healthz", responses=error_responses(400))
def healthz() -> dict[str, str]:
    return {"status": "ok"}


@router.get("/readyz", response_model=Readiness, responses={**error_responses(400), **UNREADY})
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


@router.get("/metrics", response_class=PlainTextResponse, responses=METRICS_ERRORS)
def prometheus(session: SessionDep) -> Response:
    return metrics.render(session)
