"""A small HTTP client for the service's REST API (the OpenAI fine-tuning shape), built on httpx.

It knows the endpoints and turns the API's error body `{"error": {"message", "code", "param", ...}}`
into an `ApiError` whose text is the service's own message, so the CLI can print it as-is.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from pathlib import Path
from typing import IO, Any

import httpx

JSON = dict[str, Any]


class ApiError(Exception):
    """An error answer from the API (or no answer at all: status 0)."""

    def __init__(self, status: int, message: str, code: str | None = None, body: Any = None) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.code = code
        self.body = body

    def __str__(self) -> str:
        where = f"HTTP {self.status}" if self.status else "connection"
        code = f" [{self.code}]" if self.code else ""
        return f"{where}{code}: {self.message}"


def default_base_url() -> str:
    """SGFT_API_URL, else http://$SGFT_HOST:$SGFT_PORT (the defaults of `sgft serve`)."""
    url = os.environ.get("SGFT_API_URL")
    if url:
        return url
    host = os.environ.get("SGFT_HOST", "127.0.0.1")
    if host in ("0.0.0.0", "::"):  # a bind-all address is not one a client can connect to
        host = "127.0.0.1"
    return f"http://{host}:{os.environ.get('SGFT_PORT', '8000')}"


def _error_from(response: httpx.Response) -> ApiError:
    """Build an ApiError from an error response, keeping the API's message (and problem lines)."""
    try:
        body: Any = response.json()
    except ValueError:
        text = response.text.strip() or response.reason_phrase
        return ApiError(response.status_code, text[:500])
    err = body.get("error") if isinstance(body, dict) else None
    if isinstance(err, dict):
        message = str(err.get("message") or response.reason_phrase)
        code = err.get("code")
        return ApiError(response.status_code, message, str(code) if code else None, body)
    if isinstance(body, dict) and "detail" in body:  # FastAPI's default shape, if one slips through
        return ApiError(response.status_code, json.dumps(body["detail"]), None, body)
    return ApiError(response.status_code, json.dumps(body)[:500], None, body)


class Client:
    """Calls the API with `Authorization: Bearer <api key>`; every method returns the parsed JSON."""

    def __init__(
        self, base_url: str | None = None, api_key: str | None = None, timeout: float = 30.0
    ) -> None:
        self.base_url = (base_url or default_base_url()).rstrip("/")
        self.api_key = api_key if api_key is not None else os.environ.get("SGFT_API_KEY", "")
        headers = {"Authorization": f"Bearer {self.api_key}"} if self.api_key else {}
        self.http = httpx.Client(base_url=self.base_url, headers=headers, timeout=timeout)

    def close(self) -> None:
        """Close the connection pool."""
        self.http.close()

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *_exc: object) -> None:
        self.close()

    def request(self, method: str, path: str, **kwargs: Any) -> httpx.Response:
        """Send one request; raise ApiError on a connection failure or an error status."""
        try:
            response = self.http.request(method, path, **kwargs)
        except httpx.HTTPError as exc:
            raise ApiError(0, f"cannot reach the service at {self.base_url}: {exc}") from exc
        if response.status_code >= 400:
            raise _error_from(response)
        return response

    def _json(self, method: str, path: str, **kwargs: Any) -> JSON:
        data: JSON = self.request(method, path, **kwargs).json()
        return data

    # Files
    def upload_file(self, path: Path, purpose: str = "fine-tune") -> JSON:
        """POST /v1/files: upload a JSONL dataset (validated by the service; 400 names bad lines)."""
        with path.open("rb") as fh:
            files = {"file": (path.name, fh, "application/jsonl")}
            return self._json("POST", "/v1/files", files=files, data={"purpose": purpose}, timeout=600)

    def get_file(self, file_id: str) -> JSON:
        """GET /v1/files/{id}."""
        return self._json("GET", f"/v1/files/{file_id}")

    def list_files(self) -> JSON:
        """GET /v1/files."""
        return self._json("GET", "/v1/files")

    def download_file(self, file_id: str, out: IO[bytes]) -> int:
        """Stream GET /v1/files/{id}/content into `out`; returns the number of bytes written."""
        written = 0
        try:
            with self.http.stream("GET", f"/v1/files/{file_id}/content", timeout=600) as response:
                if response.status_code >= 400:
                    response.read()
                    raise _error_from(response)
                for chunk in response.iter_bytes():
                    out.write(chunk)
                    written += len(chunk)
        except httpx.HTTPError as exc:
            raise ApiError(0, f"download of {file_id} failed: {exc}") from exc
        return written

    # Jobs
    def create_job(self, body: JSON, idempotency_key: str | None = None) -> JSON:
        """POST /v1/fine_tuning/jobs."""
        headers = {"Idempotency-Key": idempotency_key} if idempotency_key else {}
        return self._json("POST", "/v1/fine_tuning/jobs", json=body, headers=headers)

    def list_jobs(self, limit: int = 20, after: str | None = None, status: str | None = None) -> JSON:
        """GET /v1/fine_tuning/jobs (newest first)."""
        params: dict[str, Any] = {"limit": limit}
        if after:
            params["after"] = after
        if status:
            params["status"] = status
        return self._json("GET", "/v1/fine_tuning/jobs", params=params)

    def get_job(self, job_id: str) -> JSON:
        """GET /v1/fine_tuning/jobs/{id}."""
        return self._json("GET", f"/v1/fine_tuning/jobs/{job_id}")

    def job_action(self, job_id: str, action: str) -> JSON:
        """POST /v1/fine_tuning/jobs/{id}/{cancel|pause|resume|merge}."""
        if action not in ("cancel", "pause", "resume", "merge"):
            raise ValueError(f"unknown job action {action!r}")
        return self._json("POST", f"/v1/fine_tuning/jobs/{job_id}/{action}")

    def events(self, job_id: str, after: str | None = None, limit: int = 100) -> JSON:
        """GET /v1/fine_tuning/jobs/{id}/events, oldest first, only those after the event id `after`."""
        params: dict[str, Any] = {"limit": limit, "order": "asc"}
        if after:
            params["after"] = after
        return self._json("GET", f"/v1/fine_tuning/jobs/{job_id}/events", params=params)

    def iter_events(self, job_id: str) -> Iterator[JSON]:
        """All events of a job, oldest first, paging with `after`."""
        after: str | None = None
        while True:
            page = self.events(job_id, after=after)
            data: list[JSON] = page.get("data", [])
            yield from data
            if not data or not page.get("has_more"):
                return
            after = str(data[-1]["id"])

    def checkpoints(self, job_id: str, limit: int = 100) -> JSON:
        """GET /v1/fine_tuning/jobs/{id}/checkpoints (highest step first)."""
        return self._json("GET", f"/v1/fine_tuning/jobs/{job_id}/checkpoints", params={"limit": limit})

    def estimate(self, body: JSON) -> JSON:
        """POST /v1/fine_tuning/jobs/estimate: tokens, steps and expected duration, without a job."""
        return self._json("POST", "/v1/fine_tuning/jobs/estimate", json=body)

    # Models
    def hyperparameters(self) -> JSON:
        """The service's table of job hyper-parameters."""
        return self._json("GET", "/v1/fine_tuning/jobs/hyperparameters")

    def list_models(self) -> JSON:
        """GET /v1/models."""
        return self._json("GET", "/v1/models")

    def chat_stream(self, body: JSON) -> Iterator[str]:
        """The text pieces of a streamed chat completion as they arrive (`body` without `stream`)."""
        payload = {**body, "stream": True}
        try:
            with self.http.stream("POST", "/v1/chat/completions", json=payload, timeout=None) as response:
                if response.status_code >= 400:
                    response.read()
                    raise _error_from(response)
                for line in response.iter_lines():
                    if not line.startswith("data: "):
                        continue
                    data = line[len("data: ") :]
                    if data == "[DONE]":
                        return
                    chunk = json.loads(data)
                    if "error" in chunk:
                        err = chunk["error"]
                        raise ApiError(200, str(err.get("message")), err.get("code"), chunk)
                    for choice in chunk.get("choices", []):
                        content = (choice.get("delta") or {}).get("content")
                        if content:
                            yield str(content)
        except httpx.HTTPError as exc:
            raise ApiError(0, f"cannot reach {self.base_url}: {exc}") from None

    def predict(self, model: str, inputs: list[Any]) -> JSON:
        """POST /v1/predictions."""
        return self._json("POST", "/v1/predictions", json={"model": model, "input": inputs}, timeout=None)
