"""A pure ASGI middleware that refuses NUL characters in a request's path, query and headers (400).

No id, cursor, filter or header value of this API has one, and PostgreSQL cannot store or even compare a
string that does (psycopg raises before the query is sent): without this, `/v1/files/a%00b` or
`?after=%00` would be a 500 on PostgreSQL and a plain 404 on SQLite. Bodies are checked by their schemas
(api.schemas: `NoNul` strings).
"""

from __future__ import annotations

import json
from urllib.parse import parse_qsl

from starlette.types import ASGIApp, Receive, Scope, Send


def nul_in_request(scope: Scope) -> tuple[str, str | None] | None:
    """(where, param) of the first NUL character in the path, query or headers; None without one."""
    if "\x00" in scope.get("path", ""):
        return "the URL path", None
    query: bytes = scope.get("query_string", b"")
    if b"\x00" in query or b"%00" in query.lower():
        for name, value in parse_qsl(query.decode("latin-1"), keep_blank_values=True):
            if "\x00" in name or "\x00" in value:
                return f"query parameter {name.replace(chr(0), '')!r}", name.replace("\x00", "")
        return "the query string", None
    for name, value in scope.get("headers", []):
        if b"\x00" in value:
            header = name.decode("latin-1")
            return f"header {header!r}", header
    return None


class NoNul:
    """Answer 400 (OpenAI error shape) to a request with a NUL character outside its body."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        found = nul_in_request(scope) if scope["type"] == "http" else None
        if found is None:
            await self.app(scope, receive, send)
            return
        where, param = found
        error = {
            "message": f"{where} contains a NUL character (\\u0000); no value of this API has one",
            "type": "invalid_request_error",
            "param": param,
            "code": "invalid_value",
        }
        body = json.dumps({"error": error}).encode()
        headers = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]
        await send({"type": "http.response.start", "status": 400, "headers": headers})
        await send({"type": "http.response.body", "body": body})
