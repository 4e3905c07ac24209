"""/v1/files through FastAPI's TestClient: good and bad uploads, auth, tenant isolation."""

from __future__ import annotations

import pytest

from core.keys import revoke_key
from tests.service.api_fixtures import Api, sst2_bytes

BAD_FILES = {
    "not_utf8": (b'{"text": "ok", "label": 1}\n{"text": "caf\xe9", "label": 0}\n', "line 2"),
    "bad_json": (b'{"text": "ok", "label": 1}\n{"text": "oops", "label": 0\n', "line 2"),
    "not_object": (b'{"text": "ok", "label": 1}\n[1, 2]\n', "line 2"),
    "missing_key": (b'{"text": "ok", "label": 1}\n{"text": "no label"}\n', "line 2"),
    "wrong_type": (b'{"text": "ok", "label": 1}\n{"text": 5, "label": 0}\n', "line 2"),
    "mixed_labels": (b'{"text": "a", "label": 1}\n{"text": "b", "label": "pos"}\n', "label"),
    "empty": (b"", "empty"),
}


def test_upload_good_file(api: Api) -> None:
    content = sst2_bytes("train", 16)
    response = api.upload(content)
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["object"] == "file" and body["id"].startswith("file-")
    assert body["bytes"] == len(content) and body["purpose"] == "fine-tune" and body["status"] == "processed"
    assert body["filename"] == "train.jsonl"
    got = api.client.get(f"/v1/files/{body['id']}/content", headers=api.h())
    assert got.status_code == 200 and got.content == content


@pytest.mark.parametrize("kind", sorted(BAD_FILES))
def test_upload_bad_file_names_the_problem(api: Api, kind: str) -> None:
    content, expected = BAD_FILES[kind]
    response = api.upload(content)
    assert response.status_code == 400, response.text
    error = response.json()["error"]
    assert error["type"] == "invalid_request_error" and error["param"] == "file"
    assert expected.lower() in error["message"].lower(), error["message"]
    assert api.client.get("/v1/files", headers=api.h()).json()["data"] == []  # nothing stored


def test_problems_are_capped_at_twenty(api: Api) -> None:
    content = b"".join(b"{bad json\n" for _ in range(50))
    message = api.upload(content).json()["error"]["message"]
    assert "line 20" in message and "line 21:" not in message


def test_upload_size_cap_and_purpose(api: Api) -> None:
    big = b'{"text": "' + b"x" * 300_000 + b'", "label": 1}\n'
    response = api.upload(big)
    assert response.status_code == 413 and response.json()["error"]["param"] == "file"
    files = {"file": ("a.jsonl", sst2_bytes("train", 4), "application/jsonl")}
    bad = api.client.post("/v1/files", headers=api.h(), files=files, data={"purpose": "assistants"})
    assert bad.status_code == 400 and bad.json()["error"]["param"] == "purpose"


def test_filename_never_reaches_a_path(api: Api) -> None:
    file_id = api.upload_ok(sst2_bytes("train", 4), name="../../etc/passwd")
    body = api.client.get(f"/v1/files/{file_id}", headers=api.h()).json()
    assert body["filename"] == "passwd"
    assert not (api.settings.data_dir / "etc").exists()


def test_auth_required(api: Api) -> None:
    assert api.client.get("/v1/files").status_code == 401
    response = api.client.get("/v1/files", headers={"Authorization": "Bearer sgft-nope-nope"})
    assert response.status_code == 401 and response.json()["error"]["code"] == "invalid_api_key"
    with api.session() as s:
        assert revoke_key(s, api.key_b.split("-")[1])
    assert api.client.get("/v1/files", headers=api.h(api.key_b)).status_code == 401


def test_tenant_isolation_on_files(api: Api) -> None:
    file_id = api.upload_ok(sst2_bytes("train", 4))
    other = api.h(api.key_b)
    for method, path in [
        ("get", f"/v1/files/{file_id}"),
        ("get", f"/v1/files/{file_id}/content"),
        ("delete", f"/v1/files/{file_id}"),
    ]:
        response = api.client.request(method, path, headers=other)
        assert response.status_code == 404 and response.json()["error"]["code"] == "not_found"
    assert api.client.get("/v1/files", headers=other).json()["data"] == []
    assert api.client.get(f"/v1/files/{file_id}", headers=api.h()).status_code == 200


def test_list_paginates_and_delete(api: Api) -> None:
    ids = [api.upload_ok(sst2_bytes("train", 4), name=f"f{i}.jsonl") for i in range(3)]
    page = api.client.get("/v1/files?limit=2", headers=api.h()).json()
    assert page["object"] == "list" and page["has_more"] and len(page["data"]) == 2
    rest = api.client.get(f"/v1/files?limit=2&after={page['last_id']}", headers=api.h()).json()
    assert not rest["has_more"]
    assert {f["id"] for f in page["data"] + rest["data"]} == set(ids)
    deleted = api.client.delete(f"/v1/files/{ids[0]}", headers=api.h()).json()
    assert deleted == {"id": ids[0], "object": "file", "deleted": True}
    assert api.client.get(f"/v1/files/{ids[0]}", headers=api.h()).status_code == 404
