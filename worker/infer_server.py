"""`sgft infer`: the inference server. Only the API talks to it (a shared secret in a header); the API has
already checked the caller's key and resolved the model name to a `Target` (core.inference).

POST /internal/generate streams newline-delimited JSON events as tokens are produced (worker.inference);
the API turns them into OpenAI's response or its Server-Sent Events. The tokens never pass through the
database or the broker: on the embedded default the broker is polled about once a second.
"""

from __future__ import annotations

import asyncio
import hmac
import json
import logging
import threading
import time
from collections.abc import AsyncIterator
from typing import Any

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, StreamingResponse

from core.inference import TOKEN_HEADER, internal_token
from core.settings import Settings, get_settings
from worker.inference import Engine, Failed

log = logging.getLogger(__name__)


def _error(status: int, message: str) -> JSONResponse:
    return JSONResponse({"type": "error", "status": status, "message": message}, status_code=status)


def create_infer_app(settings: Settings | None = None) -> FastAPI:
    settings = settings or get_settings()
    engine = Engine(settings)
    token = internal_token(settings.secret_key)
    app = FastAPI(title="sgft inference server", docs_url=None, redoc_url=None, openapi_url=None)
    app.state.engine = engine

    def allowed(request: Request) -> bool:
        return hmac.compare_digest(request.headers.get(TOKEN_HEADER, ""), token)

    @app.get("/healthz")
    def healthz() -> dict[str, Any]:
        return {
            "status": "ok",
            "memory_used": engine.cache.used,
            "memory_budget": engine.cache.budget,
            "models": engine.cache.sizes(),
        }

    @app.post("/internal/generate", response_model=None)
    async def generate(request: Request) -> StreamingResponse | JSONResponse:
        if not allowed(request):
            return _error(403, "forbidden")
        body = await request.json()
        loop = asyncio.get_running_loop()
        queue: asyncio.Queue[dict[str, Any]] = asyncio.Queue()
        cancelled = threading.Event()

        def emit(event: dict[str, Any]) -> None:
            loop.call_soon_threadsafe(queue.put_nowait, event)

        engine.submit(engine.generate, body, emit, cancelled, time.monotonic())

        async def events() -> AsyncIterator[bytes]:
            try:
                while True:
                    event = await queue.get()
                    yield (json.dumps(event) + "\n").encode()
                    if event["type"] in ("end", "error"):
                        return
            finally:
                cancelled.set()  # the client went away (or we are done): stop generating

        return StreamingResponse(events(), media_type="application/x-ndjson")

    @app.post("/internal/predict")
    async def predict(request: Request) -> JSONResponse:
        if not allowed(request):
            return _error(403, "forbidden")
        body = await request.json()
        future = engine.submit(engine.predict, body, time.monotonic())
        try:
            result = await asyncio.wait_for(asyncio.wrap_future(future), timeout=engine.timeout)
        except Failed as exc:
            return _error(exc.status, exc.message)
        except TimeoutError:
            return _error(504, f"The request timed out after {engine.timeout:.0f} s.")
        except Exception:
            log.exception("prediction failed")
            return _error(500, "The inference server had an error.")
        return JSONResponse(result)

    return app
