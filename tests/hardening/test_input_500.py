"""Issue 24 item 6: input that answered 500 answers 4xx naming the param (or the file's line), through the
real app on SQLite and on PostgreSQL; and a real `sgft serve` keeps its keep-alive connection through all
of it (a 500 used to reset the next request on the same connection)."""

from __future__ import annotations

import io
from collections.abc import Iterator
from urllib.parse import quote

import httpx
import pytest

from tests.service.api_fixtures import Api, sst2_bytes
from tests.service.stack import Stack, serve_sqlite

# Cursors that are no id of anything: non-ASCII digits (str.isdigit() is True for all of them), numbers
# past the 32-bit seq column (PostgreSQL), a 64-bit integer and int()'s limit (4300 digits), a bad event id.
BAD_CURSORS = ["١٢٣", "²", "໒໓", str(2**31), "9" * 30, "9" * 5000, "ftevent-abc-²", "ftevent-abc-" + "1" * 40]
HUGE = 10**400  # larger than any float: float(HUGE) and math.isfinite(HUGE) raise OverflowError


def _first_page(api: Api, path: str) -> list[str]:
    return [row["id"] for row in api.client.get(path, headers=api.h()).json()["data"]]


def _job(api: Api) -> tuple[str, str]:
    file_id = api.upload_ok(sst2_bytes("train", 8))
    body = {"model": "all-MiniLM-L6-v2", "training_file": file_id}
    created = api.client.post("/v1/fine_tuning/jobs", headers=api.h(), json=body)
    assert created.status_code == 200, created.text
    return file_id, str(created.json()["id"])


@pytest.mark.parametrize("cursor", BAD_CURSORS)
def test_an_event_cursor_that_is_no_event_id_is_a_400_naming_after(api: Api, cursor: str) -> None:
    _, job_id = _job(api)
    response = api.client.get(
        f"/v1/fine_tuning/jobs/{job_id}/events", params={"after": cursor}, headers=api.h()
    )
    assert response.status_code == 400, response.text
    error = response.json()["error"]
    assert error["param"] == "after" and error["code"] == "invalid_value"
    assert "is not an event id" in error["message"]
    # The same cursor sent as Last-Event-ID (the stream's resume header) is read the same way.
    resumed = api.client.get(
        f"/v1/fine_tuning/jobs/{job_id}/events", headers={**api.h(), "Last-Event-ID": quote(cursor)}
    )
    assert resumed.status_code == 400 and resumed.json()["error"]["param"] == "after"


def test_other_lists_treat_such_cursors_like_any_unknown_id(api: Api) -> None:
    """Files, jobs and checkpoints page by id: an id that names nothing gives the first page (as before)."""
    file_id, job_id = _job(api)
    for path, first in (
        ("/v1/files", [file_id]),
        ("/v1/fine_tuning/jobs", [job_id]),
        (f"/v1/fine_tuning/jobs/{job_id}/checkpoints", []),
    ):
        assert _first_page(api, path) == first
        for cursor in BAD_CURSORS:
            response = api.client.get(path, params={"after": cursor}, headers=api.h())
            assert response.status_code == 200, (path, cursor, response.text)
            assert [row["id"] for row in response.json()["data"]] == first


@pytest.mark.parametrize(
    ("name", "value"),
    [
        ("batch_size", HUGE),  # a whole-number bound: the whole-number check took float() of it
        ("n_epochs", HUGE),
        ("learning_rate", -HUGE),
        ("max_steps", 10**30),
        ("max_seq_length", 1e308),
        ("batch_size", 2.5),
    ],
    ids=[
        "batch_size=10**400",
        "n_epochs=10**400",
        "learning_rate=-10**400",
        "max_steps=10**30",
        "1e308",
        "2.5",
    ],
)
def test_hyperparameters_out_of_every_bound_are_a_400_naming_them(api: Api, name: str, value: float) -> None:
    file_id = api.upload_ok(sst2_bytes("train", 8))
    body = {"model": "all-MiniLM-L6-v2", "training_file": file_id, "hyperparameters": {name: value}}
    for path in ("/v1/fine_tuning/jobs", "/v1/fine_tuning/jobs/estimate"):
        response = api.client.post(path, headers=api.h(), json=body)
        assert response.status_code == 400, response.text
        error = response.json()["error"]
        assert error["param"] == f"hyperparameters.{name}", error
        assert ("between" in error["message"]) or ("whole number" in error["message"])
        assert len(error["message"]) < 200  # a 401-digit value is summarised, not echoed
    assert api.client.get("/v1/fine_tuning/jobs", headers=api.h()).json()["data"] == []


@pytest.mark.parametrize(
    ("extra", "param"),
    [
        ({"hyperparameters": [1]}, "hyperparameters"),
        ({"hyperparameters": "x"}, "hyperparameters"),
        ({"method": {"type": "lora", "lora": {"hyperparameters": 5}}}, "method.lora.hyperparameters"),
        ({"method": {"type": "lora", "lora": {"hyperparameters": [1]}}}, "method.lora.hyperparameters"),
        ({"method": {"type": "sparsegrad", "sparsegrad": {"hyperparameters": "x"}}}, None),
        ({"method": {"type": "lora", "lora": [1]}}, "method"),
        ({"method": {"type": ["lora"]}}, "method.type"),
    ],
)
def test_a_hyperparameters_section_that_is_not_an_object_is_a_400(
    api: Api, extra: dict[str, object], param: str | None
) -> None:
    file_id = api.upload_ok(sst2_bytes("train", 8))
    body = {"model": "all-MiniLM-L6-v2", "training_file": file_id, **extra}
    response = api.client.post("/v1/fine_tuning/jobs", headers=api.h(), json=body)
    assert response.status_code == 400, response.text
    expected = param or "method.sparsegrad.hyperparameters"
    assert response.json()["error"]["param"] == expected


@pytest.mark.parametrize(
    ("content", "line", "words"),
    [
        (b'{"text": "a", "label": 0}\n{"text": "b", "label": 1' + b"0" * 5000 + b"}\n", 2, "4300 digits"),
        (b'{"text": "a", "label": 0, "n": -' + b"7" * 4400 + b"}\n", 1, "4300 digits"),
        # Regression files read ints as floats: 10**400 has no float, wherever the first float comes.
        (b'{"text": "a", "label": 0.5}\n{"text": "b", "label": 1' + b"0" * 400 + b"}\n", 2, "too large"),
        (b'{"text": "b", "label": 1' + b"0" * 400 + b'}\n{"text": "a", "label": 0.5}\n', 1, "too large"),
    ],
)
def test_very_long_numeric_labels_are_a_400_naming_the_line(
    api: Api, content: bytes, line: int, words: str
) -> None:
    response = api.upload(content, name="long.jsonl")
    assert response.status_code == 400, response.text
    error = response.json()["error"]
    assert error["param"] == "file" and error["code"] == "invalid_file"
    assert f"long.jsonl: line {line}: " in error["message"] and words in error["message"], error["message"]


def test_a_huge_integer_label_is_still_a_class_in_a_classification_file(api: Api) -> None:
    big = b"1" + b"0" * 400
    api.upload_ok(b'{"text": "a", "label": ' + big + b'}\n{"text": "b", "label": 1}\n', name="ints.jsonl")


@pytest.mark.parametrize("name", ["données.jsonl", "中文 数据.jsonl", "naïve-ß Ελληνικά.jsonl"])
def test_a_file_with_a_non_ascii_name_downloads_with_its_name(api: Api, name: str) -> None:
    content = sst2_bytes("train", 8)
    file_id = api.upload_ok(content, name=name)
    assert api.client.get(f"/v1/files/{file_id}", headers=api.h()).json()["filename"] == name
    response = api.client.get(f"/v1/files/{file_id}/content", headers=api.h())
    assert response.status_code == 200 and response.content == content
    disposition = response.headers["content-disposition"]
    assert disposition.isascii()
    fallback = "".join(c if c.isascii() else "_" for c in name)
    assert disposition == f"attachment; filename=\"{fallback}\"; filename*=UTF-8''{quote(name, safe='')}"


@pytest.mark.integration
def test_nul_characters_are_a_400_on_postgresql(pg_api: Api) -> None:
    """PostgreSQL refuses a NUL in any string it compares (psycopg raises before sending): every route
    with an id, a cursor, a filter or a header answers 400 instead of 500."""
    api = pg_api
    file_id, job_id = _job(api)
    for path in ("/v1/files", "/v1/fine_tuning/jobs", f"/v1/fine_tuning/jobs/{job_id}/checkpoints"):
        response = api.client.get(path, params={"after": "x\x00y"}, headers=api.h())
        assert response.status_code == 400 and response.json()["error"]["param"] == "after", response.text
    listed = api.client.get("/v1/fine_tuning/jobs", params={"metadata[k]": "a\x00"}, headers=api.h())
    assert listed.status_code == 400 and listed.json()["error"]["param"] == "metadata[k]"
    for path in ("/v1/files/a%00b", "/v1/files/a%00b/content", "/v1/fine_tuning/jobs/a%00b/events"):
        assert api.client.get(path, headers=api.h()).status_code == 400
    body = {"model": "all-MiniLM-L6-v2", "training_file": "file-\x00"}
    created = api.client.post("/v1/fine_tuning/jobs", headers=api.h(), json=body)
    assert created.status_code == 400 and created.json()["error"]["param"] == "training_file"
    body = {"model": "all-MiniLM-L6-v2", "training_file": file_id}
    replay = api.client.post(
        "/v1/fine_tuning/jobs", headers={**api.h(), "Idempotency-Key": "k\x00"}, json=body
    )
    assert replay.status_code == 400 and replay.json()["error"]["param"] == "idempotency-key"
    assert _first_page(api, "/v1/fine_tuning/jobs") == [job_id]  # and the service goes on


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    """A real `sgft serve` (uvicorn, HTTP/1.1 keep-alive) on SQLite."""
    yield from serve_sqlite(tmp_path_factory.mktemp("input500"), "prober", SGFT_BROKER_URL="memory://")


@pytest.mark.integration
def test_one_keep_alive_connection_survives_every_former_500(server: Stack) -> None:
    """Each former 500 in turn, then a plain list, all on one connection: 4xx each, and never a reset."""
    ports: set[int] = set()
    with httpx.Client(
        base_url=server.url, headers={"Authorization": f"Bearer {server.key}"}, timeout=30
    ) as client:

        def local_port(response: httpx.Response) -> int:  # the client side of the response's connection
            return int(response.extensions["network_stream"].get_extra_info("socket").getsockname()[1])

        upload = client.post(
            "/v1/files",
            files={"file": ("données 中.jsonl", io.BytesIO(sst2_bytes("train", 8)), "application/jsonl")},
            data={"purpose": "fine-tune"},
        )
        assert upload.status_code == 200, upload.text
        file_id = upload.json()["id"]
        body = {"model": "all-MiniLM-L6-v2", "training_file": file_id}
        requests: list[tuple[str, str, dict[str, object]]] = [
            ("GET", f"/v1/files/{file_id}/content", {}),
            *[
                ("GET", "/v1/fine_tuning/jobs/ftjob-none/events", {"params": {"after": c}})
                for c in BAD_CURSORS
            ],
            (
                "POST",
                "/v1/fine_tuning/jobs/estimate",
                {"json": {**body, "hyperparameters": {"batch_size": HUGE}}},
            ),
            ("POST", "/v1/fine_tuning/jobs/estimate", {"json": {**body, "hyperparameters": [1]}}),
            (
                "POST",
                "/v1/fine_tuning/jobs/estimate",
                {"json": {**body, "method": {"type": "lora", "lora": {"hyperparameters": 5}}}},
            ),
            (
                "POST",
                "/v1/files",
                {
                    "files": {
                        "file": ("long.jsonl", io.BytesIO(b'{"text": "a", "label": 1' + b"0" * 5000 + b"}\n"))
                    },
                    "data": {"purpose": "fine-tune"},
                },
            ),
        ]
        for method, path, kwargs in requests:
            response = client.request(method, path, **kwargs)  # type: ignore[arg-type]
            assert response.status_code < 500, (path, kwargs.get("params"), response.text)
            ports.add(local_port(response))
            after = client.get("/v1/files")  # the next request, on the same connection
            assert after.status_code == 200
            ports.add(local_port(after))
    assert len(ports) == 1, f"the connection was replaced {len(ports) - 1} time(s)"
