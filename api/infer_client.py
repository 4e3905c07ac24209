"""The API's side of the inference server: resolve the model for the caller's tenant, then proxy.

Tokens come back as newline-delimited JSON events while the server produces them (worker.inference); the
first event says whether the request was accepted, so an error still gets its own HTTP status before any
byte of a stream is sent.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from typing import Any

import httpx
from fastapi import Request
from starlette.concurrency import run_in_threadpool

from api.errors import APIError
from core.db import session_scope
from core.inference import TOKEN_HEADER, NotServable, Target, internal_token, resolve
from core.settings import Settings

UNAVAILABLE = "The inference server is not running; start it with `sgft infer` (`sgft run` starts it)."


def _resolve(settings: Settings, tenant_id: str, model: str) -> Target:
    with session_scope(settings.database_url) as session:
        return resolve(session, tenant_id, model, settings.models_path)


async def target_for(settings: Settings, tenant_id: str, model: str, task: str) -> Target:
    """The caller's model `model` for a route serving `task`: 404 when unknown to the tenant, 400 when it
    is a model of the other task."""
    try:
        target = await run_in_threadpool(_resolve, settings, tenant_id, model)
    except NotServable as exc:
        code = "model_not_found" if exc.status == 404 else "model_not_ready"
        raise APIError(exc.status, exc.message, param="model", code=code) from None
    if target.task != task:
        use = "POST /v1/predictions" if target.task == "classification" else "POST /v1/chat/completions"
        raise APIError(
            400, f"The model {model!r} is a {target.task} model; use {use}.", param="model", code="wrong_task"
        )
    return target


def _client(request: Request, settings: Settings) -> httpx.AsyncClient:
    client: httpx.AsyncClient | None = getattr(request.app.state, "infer_client", None)
    if client is None:
        timeout = httpx.Timeout(connect=5.0, read=settings.infer_timeout + 5.0, write=30.0, pool=10.0)
        client = httpx.AsyncClient(
            base_url=settings.infer_url,
            timeout=timeout,
            headers={TOKEN_HEADER: internal_token(settings.secret_key)},
        )
        request.app.state.infer_client = client
    return client


def engine_error(event: dict[str, Any]) -> APIError:
    status = int(event.get("status") or 502)
    if status == 500 or status not in (400, 409, 503, 504):
        status = 502  # the inference server's own failure: never reported as this API's 500
    code = {400: "invalid_value", 409: "model_not_ready", 503: "inference_unavailable", 504: "timeout"}
    message = str(event.get("message") or "The inference server had an error.")
    return APIError(status, message, code=code.get(status, "inference_error"))


def _unreachable(exc: httpx.HTTPError) -> APIError:
    if isinstance(exc, httpx.TimeoutException) and not isinstance(exc, httpx.ConnectTimeout):
        return APIError(504, "The inference server did not answer in time; retry later.", code="timeout")
    return APIError(503, UNAVAILABLE, code="inference_unavailable", headers={"Retry-After": "5"})


class Generation:
    """An accepted generation: `start` (prompt_tokens, mode), then `events()` until "end" or "error"."""

    def __init__(self, response: httpx.Response, lines: AsyncIterator[str], start: dict[str, Any]) -> None:
        self.response, self._lines, self.start = response, lines, start

    async def events(self) -> AsyncIterator[dict[str, Any]]:
        try:
            async for line in self._lines:
                if line.strip():
                    event: dict[str, Any] = json.loads(line)
                    yield event
                    if event["type"] in ("end", "error"):
                        return
            yield {"type": "error", "status": 502, "message": "The inference server stopped mid-answer."}
        except httpx.HTTPError as exc:
            err = _unreachable(exc)
            yield {"type": "error", "status": err.status, "message": err.message}
        finally:
            await self.response.aclose()


async def generate(request: Request, settings: Settings, payload: dict[str, Any]) -> Generation:
    """Send a generation to the inference server; APIError when it is refused or unreachable."""
    client = _client(request, settings)
    try:
        response = await client.send(
            client.build_request("POST", "/internal/generate", json=payload), stream=True
        )
    except httpx.HTTPError as exc:
        raise _unreachable(exc) from None
    try:
        if response.status_code != 200:
            await response.aread()
            raise engine_error({"status": 502, "message": "The inference server refused the request."})
        lines = response.aiter_lines()
        first = ""
        while not first.strip():
            first = await lines.__anext__()
        start: dict[str, Any] = json.loads(first)
    except (httpx.HTTPError, StopAsyncIteration) as exc:
        await response.aclose()
        if isinstance(exc, httpx.HTTPError):
            raise _unreachable(exc) from None
        raise engine_error({}) from None
    except APIError:
        await response.aclose()
        raise
    if start.get("type") == "error":
        await response.aclose()
        raise engine_error(start)
    return Generation(response, lines, start)


async def predict(request: Request, settings: Settings, payload: dict[str, Any]) -> dict[str, Any]:
    client = _client(request, settings)
    try:
        response = await client.post("/internal/predict", json=payload)
    except httpx.HTTPError as exc:
        raise _unreachable(exc) from None
    try:
        body: dict[str, Any] = response.json()
    except ValueError:
        raise engine_error({}) from None
    if response.status_code != 200:
        raise engine_error(body)
    return body
