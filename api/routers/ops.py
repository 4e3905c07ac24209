"""Operations: /healthz (alive), /readyz (database and broker reachable), /metrics (Prometheus)."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Callable

from fastapi import APIRouter, Request, Response
from fastapi.responses import JSONResponse, PlainTextResponse

from api import metrics
from api.deps import SessionDep, SettingsDep
from core.db import ping_database
from core.queue import ping_broker

router = APIRouter(tags=["operations"])
PROBE_SECONDS = 5.0


class Probe:
    """One check run on a thread of its own that owns every resource it opens, so a caller that stops
    waiting leaves nothing open behind; at most one runs at a time (a hung one is reported, not stacked)."""

    def __init__(self, check: Callable[[], None]) -> None:
        self.check = check
        self._busy = threading.Lock()

    async def run(self, timeout: float) -> str:
        if not self._busy.acquire(blocking=False):
            return "unavailable: the previous check has not answered yet"

        def target() -> None:
            try:
                self.check()
            finally:
                self._busy.release()

        future = asyncio.get_running_loop().run_in_executor(None, target)
        future.add_done_callback(lambda f: f.cancelled() or f.exception())  # read even when given up on
        try:
            await asyncio.wait_for(asyncio.shield(future), timeout)
        except TimeoutError:
            return f"unavailable: no answer within {timeout:g} s"
        except Exception as exc:  # reported, never raised: a probe must answer
            return f"unavailable: {type(exc).__name__}"
        return "ok"


@router.get("/healthz")
async def healthz() -> dict[str, str]:
    # async: answered on the event loop itself, with no wait for a worker thread.
    return {"status": "ok"}


@router.get("/readyz")
async def readyz(request: Request, settings: SettingsDep) -> JSONResponse:
    """200 when the database and the broker answer within a few seconds; 503 naming what is down."""
    probes: dict[str, Probe] | None = getattr(request.app.state, "readiness", None)
    if probes is None:  # made once per app: each probe's "one at a time" lock must outlive the request
        probes = request.app.state.readiness = {
            "database": Probe(lambda: ping_database(settings.database_url)),
            "broker": Probe(lambda: ping_broker(settings, timeout=3.0)),
        }
    checks = {name: await probe.run(PROBE_SECONDS) for name, probe in probes.items()}
    ok = all(v == "ok" for v in checks.values())
    return JSONResponse(
        {"status": "ok" if ok else "unavailable", "checks": checks}, status_code=200 if ok else 503
    )


@router.get("/metrics", response_class=PlainTextResponse)  # documented as text/plain in the schema
def prometheus(session: SessionDep) -> Response:
    return metrics.render(session)
