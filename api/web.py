"""The web page: `/` serves api/static/index.html and `/static/<path>` its scripts and styles.

A route (not a StaticFiles mount) so the router can be included like any other; paths are resolved
inside the static folder only, and the page talks to the same API as everybody else (Bearer key).
"""

from __future__ import annotations

from pathlib import Path

from fastapi import APIRouter, HTTPException
from fastapi.responses import FileResponse

STATIC_DIR = Path(__file__).resolve().parent / "static"
MEDIA_TYPES = {
    ".js": "text/javascript; charset=utf-8",
    ".css": "text/css; charset=utf-8",
    ".html": "text/html; charset=utf-8",
    ".svg": "image/svg+xml",
    ".png": "image/png",
    ".ico": "image/x-icon",
}
# The page is small and changes with the service: revalidate (ETag / Last-Modified) instead of caching blind.
NO_STALE = {"Cache-Control": "no-cache", "X-Content-Type-Options": "nosniff"}

router = APIRouter(include_in_schema=False)


@router.get("/")
def index() -> FileResponse:
    """The single page (jobs table, job detail, create form); routing happens in the browser (#/...)."""
    return FileResponse(STATIC_DIR / "index.html", media_type=MEDIA_TYPES[".html"], headers=NO_STALE)


@router.get("/static/{path:path}")
def static(path: str) -> FileResponse:
    """One asset of the page; anything outside api/static (or not a known type) is a 404."""
    target = (STATIC_DIR / path).resolve()
    if not target.is_relative_to(STATIC_DIR) or not target.is_file() or target.suffix not in MEDIA_TYPES:
        raise HTTPException(status_code=404, detail="not found")
    return FileResponse(target, media_type=MEDIA_TYPES[target.suffix], headers=NO_STALE)
