"""The FastAPI application factory."""

from __future__ import annotations

import gc
import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import FastAPI

from api import web
from api.bodylimit import BodyLimit
from api.errors import install_error_handlers
from api.keycache import KeyCache
from api.linelimit import LineLimit
from api.metrics import RecordRequests
from api.nonul import NoNul
from api.openapi import install_openapi
from api.ratelimit import RateLimiter
from api.routers import files, inference, job_events, jobs, models, ops
from core.settings import Settings, get_settings

_heap_frozen = False


def freeze_startup_heap() -> None:
    """Once per process: collect, then move every object alive at start-up (modules, the app, its routes)
    out of the garbage collector's sight. Otherwise the first full collection while serving scans them all:
    ~145,000 objects, a 85-97 ms stall of every request in flight, measured in-process on the 2-core VM."""
    global _heap_frozen
    if not _heap_frozen:
        _heap_frozen = True
        gc.collect()
        gc.freeze()


@asynccontextmanager
async def _lifespan(app: FastAPI) -> AsyncIterator[None]:
    settings: Settings = app.state.settings
    removed = files.sweep_uploads(settings.data_dir / "tmp")
    if removed:
        logging.getLogger(__name__).info(
            "removed %d abandoned upload(s) from %s/tmp", removed, settings.data_dir
        )
    freeze_startup_heap()
    yield
    client = getattr(app.state, "infer_client", None)
    if client is not None:
        await client.aclose()


def create_app(settings: Settings | None = None) -> FastAPI:
    """Build the app for `settings` (default: from the environment). Migrations are a separate step."""
    settings = settings or get_settings()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    app = FastAPI(
        title="SparseGrad fine-tuning service",
        version="0.1.0",
        description="OpenAI-compatible fine-tuning API whose default method is SparseGrad.",
        lifespan=_lifespan,
    )
    app.state.settings = settings
    app.state.job_limiter = RateLimiter(settings.job_rate_limit, 60.0)
    # Estimates validate files as a creation does (bounded work), and `sgft jobs create` asks for one first.
    app.state.estimate_limiter = RateLimiter(4 * settings.job_rate_limit, 60.0, "estimates")
    app.state.key_cache = KeyCache(settings.secret_key)  # a revoked key stops working within its ttl (5 s)
    install_error_handlers(app)
    app.add_middleware(RecordRequests)
    # Uploads may be multipart-wrapped: allow 64 KiB of envelope above the file cap.
    app.add_middleware(BodyLimit, max_bytes=settings.max_upload_bytes + 65536, other_max_bytes=1 << 20)
    app.add_middleware(LineLimit, max_line=settings.max_line_bytes)  # one huge line: refused while streaming
    app.add_middleware(NoNul)  # a NUL in the path, query or headers: 400 (PostgreSQL cannot compare it)
    for module in (ops, files, jobs, job_events, models, inference, web):
        app.include_router(module.router)
    install_openapi(app)
    return app
