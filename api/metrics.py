"""Prometheus metrics: request counts and latency per route, jobs by status (read at scrape time)."""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable

from fastapi import Request, Response
from prometheus_client import CONTENT_TYPE_LATEST, Counter, Gauge, Histogram, generate_latest
from sqlalchemy.orm import Session

from core.queries import count_by_status
from core.states import JobStatus

REQUESTS = Counter("sgft_http_requests_total", "HTTP requests", ["method", "route", "status"])
LATENCY = Histogram("sgft_http_request_seconds", "HTTP request latency", ["method", "route"])
JOBS = Gauge("sgft_jobs", "Jobs by status", ["status"])


async def record_request(request: Request, call_next: Callable[[Request], Awaitable[Response]]) -> Response:
    """Middleware: count and time each request under its route template (not the raw path)."""
    started = time.perf_counter()
    status = 500
    try:
        response = await call_next(request)
        status = response.status_code
        return response
    finally:
        route = request.scope.get("route")
        name = getattr(route, "path", "unmatched")
        REQUESTS.labels(request.method, name, str(status)).inc()
        LATENCY.labels(request.method, name).observe(time.perf_counter() - started)


def render(session: Session) -> Response:
    """The exposition text, with the job gauge refreshed from the database."""
    counts = count_by_status(session)
    for status in JobStatus:
        JOBS.labels(status.value).set(counts.get(status.value, 0))
    return Response(generate_latest(), media_type=CONTENT_TYPE_LATEST)
