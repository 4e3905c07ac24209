"""Errors in OpenAI's shape: `{"error": {"message", "type", "param", "code"}}`, never a stack trace."""

from __future__ import annotations

import errno
import logging
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from sqlalchemy.exc import InterfaceError, OperationalError
from starlette.exceptions import HTTPException as StarletteHTTPException

from api.schemas import ErrorResponse

log = logging.getLogger(__name__)

TYPE_OF_STATUS = {
    400: "invalid_request_error",
    401: "authentication_error",
    403: "permission_error",
    404: "invalid_request_error",
    405: "invalid_request_error",
    409: "invalid_request_error",
    413: "invalid_request_error",
    422: "invalid_request_error",
    429: "rate_limit_error",
    502: "server_error",
    503: "service_unavailable",
    504: "timeout",
}


# What each error status means in this API: the OpenAPI description of that response.
STATUS_MEANING = {
    400: "Bad request: the message and `param` name the problem",
    401: "Missing, incorrect or revoked API key",
    404: "No such object for this tenant",
    409: "Conflict with the object's state (the message says which)",
    413: "Request body larger than the limit",
    429: "Rate limit exceeded; retry after the Retry-After header's seconds",
    502: "The inference server answered with something that is not a reply",
    503: "The database, broker or inference server is unavailable or busy; retry in a few seconds",
    504: "The request ran past its time limit",
    507: "The service's storage is full; nothing was stored",
}


def error_responses(*codes: int) -> dict[int | str, dict[str, Any]]:
    """The `responses=` of a route (or router) that can answer `codes`, each with the error body's schema."""
    return {code: {"model": ErrorResponse, "description": STATUS_MEANING[code]} for code in codes}


class APIError(Exception):
    """Raised by handlers; rendered as an OpenAI-style error body."""

    def __init__(
        self,
        status: int,
        message: str,
        *,
        param: str | None = None,
        code: str | None = None,
        type: str | None = None,
        headers: dict[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.param = param
        self.code = code
        self.type = type or TYPE_OF_STATUS.get(status, "api_error")
        self.headers = headers


def not_found(kind: str, object_id: str, param: str = "id") -> APIError:
    """The 404 for an object that does not exist for this tenant (whether or not another tenant has it)."""
    return APIError(404, f"No such {kind}: {object_id!r}", param=param, code="not_found")


def error_body(
    message: str, type: str, param: str | None = None, code: str | None = None
) -> dict[str, object]:
    return {"error": {"message": message, "type": type, "param": param, "code": code}}


def _storage_full(request: Request, what: str) -> JSONResponse:
    """507: a full disk is its own error (the request was fine; retrying later may work), never a 500."""
    log.error("storage full on %s %s: %s", request.method, request.url.path, what)
    message = f"No space left on {what}; nothing was stored. Retry once the operator has freed space."
    return JSONResponse(error_body(message, "server_error", None, "storage_full"), status_code=507)


def install_error_handlers(app: FastAPI) -> None:
    """Render every error, including validation and unexpected ones, in OpenAI's shape."""

    @app.exception_handler(APIError)
    async def _api_error(_request: Request, exc: APIError) -> JSONResponse:
        body = error_body(exc.message, exc.type, exc.param, exc.code)
        return JSONResponse(body, status_code=exc.status, headers=exc.headers)

    @app.exception_handler(RequestValidationError)
    async def _validation(_request: Request, exc: RequestValidationError) -> JSONResponse:
        first = exc.errors()[0] if exc.errors() else {"loc": (), "msg": "invalid request"}
        loc = [str(p) for p in first.get("loc", ()) if p not in ("body", "query", "path", "header")]
        param = ".".join(loc) or None
        message = f"{param}: {first.get('msg')}" if param else str(first.get("msg"))
        return JSONResponse(
            error_body(message, "invalid_request_error", param, "invalid_value"), status_code=400
        )

    @app.exception_handler(StarletteHTTPException)
    async def _http(_request: Request, exc: StarletteHTTPException) -> JSONResponse:
        body = error_body(str(exc.detail), TYPE_OF_STATUS.get(exc.status_code, "api_error"))
        return JSONResponse(body, status_code=exc.status_code, headers=getattr(exc, "headers", None))

    @app.exception_handler(OSError)
    async def _os_error(request: Request, exc: OSError) -> JSONResponse:
        if exc.errno in (errno.ENOSPC, errno.EDQUOT):
            return _storage_full(request, "the service's storage")
        return await _unexpected(request, exc)

    @app.exception_handler(OperationalError)
    @app.exception_handler(InterfaceError)
    async def _database_down(request: Request, exc: Exception) -> JSONResponse:
        if "database or disk is full" in str(exc):
            return _storage_full(request, "the database")
        # A lost database connection is an outage to wait out, not a bug: 503 + Retry-After, no trace.
        log.warning("database unavailable on %s %s: %s", request.method, request.url.path, type(exc).__name__)
        body = error_body("The database is unavailable; retry in a few seconds.", "service_unavailable")
        return JSONResponse(body, status_code=503, headers={"Retry-After": "5"})

    @app.exception_handler(Exception)
    async def _unexpected(request: Request, exc: Exception) -> JSONResponse:
        log.exception("unhandled error on %s %s", request.method, request.url.path)
        body = error_body("The server had an error while processing your request.", "server_error")
        return JSONResponse(body, status_code=500)
