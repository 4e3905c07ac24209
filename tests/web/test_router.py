"""The page router alone: `/` is the page, `/static/...` serves its assets and nothing outside them."""

from __future__ import annotations

import re

import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient

from api import web


@pytest.fixture(scope="module")
def client() -> TestClient:
    app = FastAPI()
    app.include_router(web.router)
    return TestClient(app)


def test_index_is_the_page(client: TestClient) -> None:
    r = client.get("/")
    assert r.status_code == 200
    assert r.headers["content-type"].startswith("text/html")
    assert '<script type="module" src="/static/app.js">' in r.text


def test_every_asset_the_page_names_is_served(client: TestClient) -> None:
    """index.html and every JS module import resolve to a served file (no CDN, no build step)."""
    html = client.get("/").text
    refs = set(re.findall(r'(?:src|href)="(/static/[^"]+)"', html))
    assert {"/static/app.js", "/static/style.css"} <= refs
    queue, seen = list(refs), set()
    while queue:
        url = queue.pop()
        if url in seen:
            continue
        seen.add(url)
        r = client.get(url)
        assert r.status_code == 200, url
        if url.endswith(".js"):
            assert r.headers["content-type"].startswith("text/javascript")
            base = url.rsplit("/", 1)[0]
            for imp in re.findall(r'from "(\./[^"]+)"', r.text):
                queue.append(f"{base}/{imp[2:]}")
            assert "http://" not in r.text and "https://" not in r.text, f"{url} refers to the network"
    assert len(seen) >= 7


@pytest.mark.parametrize(
    "path",
    ["/static/../web.py", "/static/%2e%2e/web.py", "/static/..%2fweb.py", "/static/nope.js", "/static/"],
)
def test_nothing_outside_static_is_served(client: TestClient, path: str) -> None:
    assert client.get(path).status_code == 404
