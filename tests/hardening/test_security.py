"""Security: authentication on every /v1 route, tenant isolation on every route and id kind, hashed keys,
user strings never reaching a path or a shell, capped bodies, the job rate limit, hyper-parameter bounds.

Routes are enumerated from the app itself, so a route added later is covered without editing this file."""

from __future__ import annotations

import hashlib
import hmac
import io
import re
from collections.abc import Iterator
from pathlib import Path

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import select, text, update

from api.app import create_app
from core.keys import create_key, revoke_key
from core.models import ApiKey, Checkpoint, Job
from tests.service.api_fixtures import Api, running_api, sst2_bytes

MODEL = "all-MiniLM-L6-v2"
PARAM = re.compile(r"{(\w+)(?::path)?}")


def v1_routes(api: Api) -> list[tuple[str, str]]:
    """(method, path template) of every /v1 route of the app."""
    paths = api.client.app.openapi()["paths"]  # type: ignore[attr-defined]
    return sorted((m.upper(), p) for p, ops in paths.items() if p.startswith("/v1") for m in ops)


def fill(path: str, ids: dict[str, str]) -> str:
    return PARAM.sub(lambda m: ids.get(m.group(1), "x"), path)


def call(api: Api, method: str, path: str, headers: dict[str, str]) -> int:
    body = {} if method in ("POST", "PUT", "PATCH") else None
    return int(api.client.request(method, path, headers=headers, json=body).status_code)


@pytest.fixture
def owned(api: Api) -> Iterator[dict[str, str]]:
    """Tenant A's objects: a file, a succeeded job with a checkpoint, its fine-tuned model, a result file."""
    file_id = api.upload_ok(sst2_bytes("train", 16))
    created = api.client.post(
        "/v1/fine_tuning/jobs",
        headers=api.h(),
        json={"model": MODEL, "training_file": file_id, "suffix": "a"},
    )
    assert created.status_code == 200, created.text
    job_id = created.json()["id"]
    result = api.upload_ok(sst2_bytes("dev", 4), "result.jsonl")
    model = f"ft:{MODEL}:a:{job_id[6:]}"
    with api.session() as s:
        s.execute(
            update(Job)
            .where(Job.id == job_id)
            .values(status="succeeded", fine_tuned_model=model, result_files=[result], finished_at=1.0)
        )
        s.add(
            Checkpoint(id="ftckpt-a1", job_id=job_id, step=2, storage_key="checkpoints/x/step-2", metrics={})
        )
        s.commit()
    yield {"file_id": file_id, "fine_tuning_job_id": job_id, "model_id": model, "result": result}


def test_every_v1_route_refuses_missing_malformed_and_revoked_keys(api: Api, owned: dict[str, str]) -> None:
    with api.session() as s:
        _, revoked = create_key(s, "tenant-a", api.settings.secret_key)
        assert revoke_key(s, revoked.split("-")[1])
    wrong_secret = api.key_a[:-4] + ("AAAA" if not api.key_a.endswith("AAAA") else "BBBB")
    bad = {
        "missing": {},
        "empty bearer": {"Authorization": "Bearer "},
        "basic scheme": {"Authorization": f"Basic {api.key_a}"},
        "not a key": {"Authorization": "Bearer hello"},
        "wrong secret": {"Authorization": f"Bearer {wrong_secret}"},
        "unknown prefix": {"Authorization": "Bearer sgft-000000000000-abc"},
        "sql in key": {"Authorization": "Bearer sgft-' OR '1'='1-x"},
        "revoked": {"Authorization": f"Bearer {revoked}"},
    }
    routes = v1_routes(api)
    assert len(routes) >= 15
    for method, template in routes:
        path = fill(template, owned)
        for name, headers in bad.items():
            status = call(api, method, path, headers)
            assert status == 401, f"{method} {path} with a {name} key answered {status}"


def test_cross_tenant_access_is_404_on_every_route_and_id_kind(api: Api, owned: dict[str, str]) -> None:
    other = api.h(api.key_b)
    with_ids = [(m, p) for m, p in v1_routes(api) if PARAM.search(p)]
    kinds = {k for _, p in with_ids for k in PARAM.findall(p)}
    assert {"file_id", "fine_tuning_job_id", "model_id"} <= kinds
    for method, template in with_ids:
        path = fill(template, owned)
        status = call(api, method, path, other)
        assert status == 404, f"tenant B: {method} {path} answered {status}"
    for method, template in with_ids:  # B's deletes and cancels changed nothing of A's
        if method == "GET" and "/content" not in template and "/events" not in template:
            path = fill(template, owned)
            assert api.client.get(path, headers=api.h()).status_code == 200, path
    # The result file (another id of kind file) and list routes: nothing of A's shows up for B.
    assert api.client.get(f"/v1/files/{owned['result']}", headers=other).status_code == 404
    for path in ("/v1/files", "/v1/fine_tuning/jobs", "/v1/models"):
        listed = api.client.get(path, headers=other).json()["data"]
        assert not {o["id"] for o in listed} & set(owned.values()), path
    # Using A's file in B's job is refused without saying whether the file exists.
    response = api.client.post(
        "/v1/fine_tuning/jobs", headers=other, json={"model": MODEL, "training_file": owned["file_id"]}
    )
    assert response.status_code == 400 and response.json()["error"]["code"] == "file_not_found"
    assert api.client.get(f"/v1/files/{owned['file_id']}", headers=api.h()).status_code == 200


def test_keys_are_stored_as_hmac_under_the_secret(api: Api) -> None:
    prefix = api.key_a.split("-")[1]
    with api.session() as s:
        row = s.scalars(select(ApiKey).where(ApiKey.prefix == prefix)).one()
        dump = " ".join(str(v) for r in s.execute(text("SELECT * FROM api_keys")).all() for v in r)
    secret_part = api.key_a.split("-", 2)[2]
    assert secret_part not in dump and api.key_a not in dump
    expected = hmac.new(api.settings.secret_key.encode(), api.key_a.encode(), hashlib.sha256).hexdigest()
    assert row.key_hash == expected and row.key_hash != hashlib.sha256(api.key_a.encode()).hexdigest()
    # The pepper matters: the same database under another secret accepts no key.
    other = create_app(api.settings.model_copy(update={"secret_key": "another-secret-of-enough-length"}))
    with TestClient(other) as client:
        assert client.get("/v1/files", headers=api.h()).status_code == 401


HOSTILE_NAMES = [
    "../../etc/passwd",
    "/etc/shadow",
    "..\\..\\windows\\system32\\config",
    "$(touch PWNED-dollar).jsonl",
    "`touch PWNED-backtick`.jsonl",
    "a; touch PWNED-semicolon; .jsonl",
    "name\r\nX-Injected: 1.jsonl",
    "x" * 1000 + ".jsonl",
    ".jsonl",
    "..",
]


def test_user_strings_never_reach_a_path_or_a_shell(
    api: Api, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    before = set(Path("/etc").iterdir())
    for name in HOSTILE_NAMES:
        files = {"file": (name, io.BytesIO(sst2_bytes("train", 4)), "application/jsonl")}
        response = api.client.post("/v1/files", headers=api.h(), files=files)
        assert response.status_code == 200, (name, response.text)
        body = response.json()
        assert "/" not in body["filename"] and "\\" not in body["filename"] and len(body["filename"]) <= 255
        assert "\n" not in body["filename"] and "\r" not in body["filename"]
        content = api.client.get(f"/v1/files/{body['id']}/content", headers=api.h())
        assert content.status_code == 200 and "\n" not in content.headers["content-disposition"]
    stored = sorted(
        p.relative_to(api.settings.data_dir) for p in api.settings.data_dir.rglob("*") if p.is_file()
    )
    assert all(re.fullmatch(r"(artifacts/files/file-[0-9a-f]{24}|api\.db.*)", str(p)) for p in stored), stored
    assert not list(Path("/").glob("PWNED*")) and not list(tmp_path.rglob("PWNED*"))
    assert not list(api.settings.data_dir.rglob("PWNED*")) and set(Path("/etc").iterdir()) == before
    # Ids in paths are looked up, never joined to a folder.
    for probe in ("..%2F..%2Fetc%2Fpasswd", "file-..", "%2e%2e"):
        assert api.client.get(f"/v1/files/{probe}/content", headers=api.h()).status_code == 404
    train = api.upload_ok(sst2_bytes("train", 8))
    for model in ("../../../etc", "/tmp", "all-MiniLM-L6-v2/../../x"):
        body = {"model": model, "training_file": train}
        response = api.client.post("/v1/fine_tuning/jobs", headers=api.h(), json=body)
        assert response.status_code == 400 and response.json()["error"]["param"] == "model"
    body = {"model": MODEL, "training_file": train, "suffix": "../x"}
    assert api.client.post("/v1/fine_tuning/jobs", headers=api.h(), json=body).status_code == 400


def _app(tmp_path: Path, **overrides: int) -> Iterator[Api]:
    yield from running_api(tmp_path, "tenant-a", **overrides)  # a second key of the same tenant


@pytest.fixture
def roomy(tmp_path: Path) -> Iterator[Api]:
    """An app whose upload cap (64 MiB) is far above what a JSON request may be; 3 jobs a minute."""
    yield from _app(tmp_path, max_upload_bytes=64 << 20, job_rate_limit=3)


@pytest.fixture
def unlimited(tmp_path: Path) -> Iterator[Api]:
    yield from _app(tmp_path, job_rate_limit=10_000)


def test_request_bodies_are_capped(roomy: Api) -> None:
    train = roomy.upload_ok(sst2_bytes("train", 8))
    huge = {"model": MODEL, "training_file": train, "metadata": {"k": "v" * (4 << 20)}}  # a 4 MiB JSON body
    response = roomy.client.post("/v1/fine_tuning/jobs", headers=roomy.h(), json=huge)
    assert response.status_code == 413, response.text[:300]
    assert response.json()["error"]["code"] == "request_too_large"
    long_value = {"model": MODEL, "training_file": train, "metadata": {"k": "v" * 1000}}
    response = roomy.client.post("/v1/fine_tuning/jobs", headers=roomy.h(), json=long_value)
    assert response.status_code == 400 and "metadata" in response.json()["error"]["param"]


def test_job_creation_is_rate_limited_per_key(roomy: Api) -> None:
    train = roomy.upload_ok(sst2_bytes("train", 8))
    body = {"model": MODEL, "training_file": train}
    codes = [
        roomy.client.post("/v1/fine_tuning/jobs", headers=roomy.h(), json=body).status_code for _ in range(5)
    ]
    assert codes == [200, 200, 200, 429, 429]
    limited = roomy.client.post("/v1/fine_tuning/jobs", headers=roomy.h(), json=body)
    assert int(limited.headers["retry-after"]) >= 1 and limited.json()["error"]["type"] == "rate_limit_error"
    other_key = roomy.client.post("/v1/fine_tuning/jobs", headers=roomy.h(roomy.key_b), json=body)
    assert other_key.status_code == 200  # the limit is per key
    assert roomy.client.get("/v1/fine_tuning/jobs", headers=roomy.h()).status_code == 200  # reads are not


def test_hyperparameter_bounds_are_a_400_naming_the_bound(unlimited: Api) -> None:
    from rules.hparam_bounds import NUMBER_BOUNDS

    train = unlimited.upload_ok(sst2_bytes("train", 8))
    for name, (low, high, integer) in NUMBER_BOUNDS.items():
        for value in (high * 10 + 1, low - 1 if low >= 1 else -1.0):
            body = {"model": MODEL, "training_file": train, "hyperparameters": {name: value}}
            response = unlimited.client.post("/v1/fine_tuning/jobs", headers=unlimited.h(), json=body)
            assert response.status_code == 400, (name, value, response.text)
            error = response.json()["error"]
            assert error["param"] == f"hyperparameters.{name}", error
            assert f"{high:g}" in error["message"] or "non-negative" in error["message"], error
        if integer:
            body = {"model": MODEL, "training_file": train, "hyperparameters": {name: low + 0.5}}
            response = unlimited.client.post("/v1/fine_tuning/jobs", headers=unlimited.h(), json=body)
            assert response.status_code == 400 and "whole number" in response.json()["error"]["message"], name
    nested = {
        "model": MODEL,
        "training_file": train,
        "method": {"type": "sparsegrad", "sparsegrad": {"hyperparameters": {"density": 2.0}}},
    }
    response = unlimited.client.post("/v1/fine_tuning/jobs", headers=unlimited.h(), json=nested)
    assert response.status_code == 400 and "between 0.0001 and 1" in response.json()["error"]["message"]


def test_a_revoked_key_stops_working_once_its_cache_entry_expires(api: Api) -> None:
    from api.keycache import KeyCache

    app = api.client.app  # type: ignore[attr-defined]
    assert api.client.get("/v1/files", headers=api.h()).status_code == 200  # verified and cached
    with api.session() as s:
        assert revoke_key(s, api.key_a.split("-")[1])
    # Within the cache's ttl (5 s in production) the process may still accept it; past it, never.
    app.state.key_cache = KeyCache(api.settings.secret_key, ttl=0.0)
    assert api.client.get("/v1/files", headers=api.h()).status_code == 401
    assert app.state.key_cache.get(api.key_a) is None  # refusals are not cached either
