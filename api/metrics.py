"""Prometheus metrics: request counts and latency per route, jobs by status (read at scrape time)."""

from __future__ import annotations

import time

from fastapi import Response
from prometheus_client import CONTENT_TYPE_LATEST, Counter, Gauge, Histogram, generate_latest
from sqlalchemy.orm import Session
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from core.queries import count_by_status
from rules.states import JobStatus

REQUESTS = Counter("sgft_http_requests_total", "HTTP requests", ["method", "route", "status"])
LATENCY = Histogram("sgft_http_request_seconds", "HTTP request latency", ["method", "route"])
JOBS = Gauge("sgft_jobs", "Jobs by status", ["status"])


class RecordRequests:
    """Pure ASGI middleware: count and time each request under its route template (not the raw path).

    (Not `@app.middleware("http")`: Starlette's BaseHTTPMiddleware runs the app in a task with memory
    streams, a large share of a poll's CPU.) The time runs until the response has been sent.
    """

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        status = 500

        async def send_status(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, send_status)
        finally:
            name = getattr(scope.get("route"), "path", "unmatched")
            REQUESTS.labels(scope["method"], name, str(status)).inc()
            LATENCY.labels(scope["method"], name).observe(time.perf_counter() - started)


def render(session: Session) -> Response:
    """The exposition text, with the job gauge refreshed from the database."""
    counts = count_by_status(session)
    for status in JobStatus:
        JOBS.labels(status.value).set(counts.get(status.value, 0))
    return Response(generate_latest(), media_type=CONTENT_TYPE_LATEST)
