"""A pure ASGI middleware that refuses an upload as soon as one line of its file passes a byte cap.

The size cap (api.bodylimit) alone would let a single 500 MB line stream to disk before validation reads it
back as one string; this one scans the multipart body while it arrives, counts the lines of the part that
carries a file, and answers 400 naming the line after at most `max_line` bytes of it.
"""

from __future__ import annotations

import json
import re

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from rules.datasets import not_jsonl

_BOUNDARY = re.compile(rb'boundary="?([^";,]+)"?', re.IGNORECASE)
_FILENAME = re.compile(rb'filename="([^"]*)"', re.IGNORECASE)
_HEAD = 1024  # bytes of each line kept: enough for a part header or a boundary


class _FileLines:
    """Line tracking over a multipart body fed in arbitrary chunks; `feed` returns the number of the
    first file line that grew past `max_line`, or None."""

    def __init__(self, boundary: bytes, max_line: int) -> None:
        self.delimiter = b"--" + boundary
        self.max_line = max_line
        self.head = b""  # the start of the current line
        self.length = 0  # bytes of the current line so far
        self.in_headers = False
        self.file_part = False  # the part being read carries a file (its headers had filename=)
        self.in_file = False
        self.line = 0  # completed lines of the file part
        self.filename = "upload"

    def _end_line(self) -> None:
        head = self.head
        if head.startswith(self.delimiter):
            self.in_headers, self.file_part, self.in_file, self.line = True, False, False, 0
        elif self.in_headers:
            if head in (b"\r", b""):
                self.in_headers, self.in_file = False, self.file_part
            elif match := _FILENAME.search(head):
                self.file_part = True
                self.filename = match.group(1).decode(errors="replace").rsplit("/", 1)[-1] or "upload"
        elif self.in_file:
            self.line += 1
        self.head, self.length = b"", 0

    def feed(self, chunk: bytes) -> int | None:
        start = 0
        while True:
            end = chunk.find(b"\n", start)
            piece = chunk[start:] if end < 0 else chunk[start:end]
            if len(self.head) < _HEAD:
                self.head += piece[: _HEAD - len(self.head)]
            self.length += len(piece)
            if self.in_file and self.length > self.max_line:
                return self.line + 1
            if end < 0:
                return None
            self._end_line()
            start = end + 1


class LineLimit:
    """Answer 400 (OpenAI error shape) once a line of an uploaded file passes `max_line` bytes."""

    def __init__(self, app: ASGIApp, max_line: int, path: str = "/v1/files") -> None:
        self.app = app
        self.max_line = max_line
        self.path = path

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["method"] != "POST" or scope["path"] != self.path:
            await self.app(scope, receive, send)
            return
        content_type = dict(scope.get("headers") or []).get(b"content-type", b"")
        match = _BOUNDARY.search(content_type)
        if not match:
            await self.app(scope, receive, send)
            return
        lines = _FileLines(match.group(1), self.max_line)
        too_long: int | None = None

        async def limited_receive() -> Message:
            nonlocal too_long
            if too_long is not None:
                return {"type": "http.disconnect"}
            message = await receive()
            if message["type"] == "http.request":
                too_long = lines.feed(message.get("body", b""))
                if too_long is not None:
                    return {"type": "http.disconnect"}
            return message

        async def guarded_send(message: Message) -> None:
            if too_long is None:
                await send(message)

        await self.app(scope, limited_receive, guarded_send)
        if too_long is not None:
            # A first line without end is often a file that is not JSONL at all (Parquet, gzip...): say so.
            verdict = not_jsonl(lines.head, lines.filename) if too_long == 1 else None
            await _reply_400(send, lines.filename, too_long, self.max_line, verdict)


async def _reply_400(send: Send, filename: str, line: int, limit: int, verdict: str | None = None) -> None:
    error = {
        "message": f"{filename}: {verdict}"
        if verdict
        else f"{filename}: line {line}: longer than the {limit} byte line limit; one JSONL line holds "
        "one example (split long texts, or check that the file has newlines)",
        "type": "invalid_request_error",
        "param": "file",
        "code": "invalid_file",
    }
    body = json.dumps({"error": error}).encode()
    # `connection: close` makes the server drop the connection instead of draining the rest of the body.
    headers = [
        (b"content-type", b"application/json"),
        (b"content-length", str(len(body)).encode()),
        (b"connection", b"close"),
    ]
    await send({"type": "http.response.start", "status": 400, "headers": headers})
    await send({"type": "http.response.body", "body": body})
