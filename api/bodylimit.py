"""A pure ASGI middleware that caps request bodies while they stream in (before any parsing)."""

from __future__ import annotations

import json
from typing import Any

from starlette.types import ASGIApp, Message, Receive, Scope, Send


class BodyLimit:
    """Answer 413 (OpenAI error shape) as soon as a request body passes `max_bytes`, chunked or not.

    Past the cap the app is told the client disconnected (so no handler runs on a partial body) and
    whatever it answers is replaced by the 413.
    """

    def __init__(
        self, app: ASGIApp, max_bytes: int, other_max_bytes: int | None = None, upload_path: str = "/v1/files"
    ) -> None:
        self.app = app
        self.max_bytes = max_bytes
        # Every route but the upload parses its whole body in memory (JSON): it gets a far smaller cap.
        self.other_max_bytes = other_max_bytes or max_bytes
        self.upload_path = upload_path

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["method"] in ("GET", "HEAD"):  # no GET route reads a body
            await self.app(scope, receive, send)
            return
        upload = scope["path"] == self.upload_path
        limit = self.max_bytes if upload else self.other_max_bytes
        seen = 0
        too_large = False

        async def limited_receive() -> Message:
            nonlocal seen, too_large
            if too_large:
                return {"type": "http.disconnect"}
            message = await receive()
            if message["type"] == "http.request":
                seen += len(message.get("body", b""))
                if seen > limit:
                    too_large = True
                    return {"type": "http.disconnect"}
            return message

        async def guarded_send(message: Message) -> None:
            if not too_large:
                await send(message)

        await self.app(scope, limited_receive, guarded_send)
        if too_large:
            await _reply_413(send, limit, upload)


async def _reply_413(send: Send, limit: int, upload: bool = True) -> None:
    error: dict[str, Any] = {
        "message": f"Request body is larger than the {limit} byte limit",
        "type": "invalid_request_error",
        "param": "file" if upload else None,
        "code": "file_too_large" if upload else "request_too_large",
    }
    body = json.dumps({"error": error}).encode()
    # `connection: close` makes the server drop the connection instead of draining the rest of the body.
    headers = [
        (b"content-type", b"application/json"),
        (b"content-length", str(len(body)).encode()),
        (b"connection", b"close"),
    ]
    await send({"type": "http.response.start", "status": 413, "headers": headers})
    await send({"type": "http.response.body", "body": body})
