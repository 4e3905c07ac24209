"""A corpus of broken datasets, each refused with a 4xx that names the line (or the param), nothing stored;
and a 1 GB single line streamed to a real `sgft serve`, refused early without being held in memory."""

from __future__ import annotations

import csv
import gzip
import io
import json
import os
import re
import zipfile
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.service.api_fixtures import CHAT, Api, running_api, sst2_bytes
from tests.service.stack import Stack, serve_sqlite

OK = b'{"text": "fine", "label": 1}\n{"text": "bad", "label": 0}\n'
LINE_CAP = 1 << 20  # api.linelimit: the longest JSONL line accepted

# name -> (content, text the error must contain). Line 1 or 2 is good data unless the case is about it.
CORPUS: dict[str, tuple[bytes, str]] = {
    "truncated_json": (OK + b'{"text": "x", "label": 1\n', "line 3"),
    "trailing_garbage": (OK + b'{"text": "x", "label": 1} extra\n', "line 3"),
    "single_quotes": (OK + b"{'text': 'x', 'label': 1}\n", "line 3"),
    "not_an_object": (OK + b'"just a string"\n', "line 3"),
    "label_is_list": (OK + b'{"text": "x", "label": [1]}\n', "line 3"),
    "label_is_null": (OK + b'{"text": "x", "label": null}\n', "line 3"),
    "label_is_bool": (OK + b'{"text": "x", "label": true}\n', "line 3"),
    "label_is_nan": (OK + b'{"text": "x", "label": NaN}\n', "line 3"),
    "label_is_infinite": (OK + b'{"text": "x", "label": 1e999}\n', "line 3"),
    "text_is_number": (OK + b'{"text": 12, "label": 1}\n', "line 3"),
    "text_is_empty": (OK + b'{"text": "   ", "label": 1}\n', "line 3"),
    "text_pair_is_object": (
        b'{"text": "a", "text_pair": "b", "label": 1}\n{"text": "a", "text_pair": {}, "label": 1}\n',
        "line 2",
    ),
    "binary_bytes": (OK + bytes(range(256)) + b"\n", "line 3"),
    "nul_bytes": (OK + b'{"text": "a\x00b", "label": 1}\n', "line 3"),
    "latin1": (OK + '{"text": "café", "label": 1}\n'.encode("latin-1"), "line 3"),
    "utf16": ('{"text": "a", "label": 1}\n'.encode("utf-16"), "line 1"),
    "zero_bytes": (b"", "empty"),
    "only_blank_lines": (b"\n\n   \n", "empty"),
    "nested_json_bomb": (OK + b"[" * 200_000 + b"\n", "line 3"),
    "mixed_label_kinds": (OK + b'{"text": "x", "label": "positive"}\n', "line 3"),
    "mixed_formats": (OK + CHAT.splitlines(keepends=True)[0], "line 3"),
    "chat_unknown_role": (b'{"messages": [{"role": "robot", "content": "hi"}]}\n', "line 1"),
    "chat_no_assistant": (b'{"messages": [{"role": "user", "content": "hi"}]}\n', "line 1"),
    "unknown_format": (OK + b'{"question": "x", "answer": "y"}\n', "line 3"),
    "line_over_cap": (OK + b'{"text": "' + b"x" * (LINE_CAP + 10) + b'", "label": 1}\n', "line 3"),
}


@pytest.fixture
def api(tmp_path: Path) -> Iterator[Api]:
    """The app on SQLite with a 4 MiB upload cap (room for a line over the 1 MiB line cap)."""
    yield from running_api(tmp_path, max_upload_bytes=4 << 20)


@pytest.mark.parametrize("case", sorted(CORPUS))
def test_broken_dataset_is_refused_naming_the_line(api: Api, case: str) -> None:
    content, expected = CORPUS[case]
    response = api.upload(content, name=f"{case}.jsonl")
    assert response.status_code == 400, response.text
    error = response.json()["error"]
    assert error["param"] == "file" and error["type"] == "invalid_request_error"
    assert expected in error["message"].lower(), error["message"]
    assert f"{case}.jsonl" in error["message"]
    assert api.client.get("/v1/files", headers=api.h()).json()["data"] == []  # nothing stored
    assert not list((api.settings.data_dir / "tmp").glob("*"))  # the spooled upload is removed


def _zip(members: dict[str, bytes]) -> bytes:
    out = io.BytesIO()
    with zipfile.ZipFile(out, "w", zipfile.ZIP_DEFLATED) as archive:
        for name, data in members.items():
            archive.writestr(name, data)
    return out.getvalue()


def _csv(delimiter: str) -> bytes:
    out = io.StringIO()
    writer = csv.writer(out, delimiter=delimiter)
    writer.writerow(["text", "label"])
    writer.writerows([json.loads(line)["text"], json.loads(line)["label"]] for line in SST2_ROWS)
    return out.getvalue().encode()


SST2_ROWS = sst2_bytes("train", 40).decode().splitlines()
SHEET = (
    b'<worksheet xmlns="http://schemas.openxmlformats.org/spreadsheetml/2006/main"><sheetData/></worksheet>'
)
# name -> (content, file name, what the message must call it). Each has more than 20 lines or none at all:
# the answer is one sentence for the file, never "line N: invalid JSON" per line.
NOT_JSONL: dict[str, tuple[bytes, str, str]] = {
    "csv": (_csv(","), "train.csv", "looks like csv (first line 'text,label')"),
    "tsv": (_csv("\t"), "train.tsv", "looks like tsv"),
    "csv_named_jsonl": (_csv(","), "train.jsonl", "looks like csv"),
    "json_array": (json.dumps([json.loads(r) for r in SST2_ROWS]).encode(), "train.json", "a json array"),
    "json_array_indented": (
        json.dumps([json.loads(r) for r in SST2_ROWS], indent=2).encode(),
        "train.json",
        "a json array",
    ),
    "pretty_printed_object": (json.dumps(json.loads(SST2_ROWS[0]), indent=2).encode(), "one.json", "pretty"),
    "gzip": (gzip.compress(sst2_bytes("train", 40)), "train.jsonl.gz", "gzip"),
    # Parquet's framing: the magic "PAR1" opens and closes the file around its pages and footer.
    "parquet": (b"PAR1" + bytes(range(256)) * 4 + b"\x00\x01\x00\x00PAR1", "train.parquet", "parquet"),
    "xlsx": (
        _zip(
            {
                "[Content_Types].xml": b"<Types/>",
                "xl/workbook.xml": b"<workbook/>",
                "xl/worksheets/sheet1.xml": SHEET,
            }
        ),
        "train.xlsx",
        "excel workbook (xlsx)",
    ),
    "zip": (_zip({"train.jsonl": sst2_bytes("train", 40)}), "train.zip", "zip archive"),
}


@pytest.mark.parametrize("case", sorted(NOT_JSONL))
def test_a_file_that_is_not_jsonl_gets_one_message_naming_it_and_the_format(api: Api, case: str) -> None:
    content, name, looks_like = NOT_JSONL[case]
    response = api.upload(content, name=name)
    assert response.status_code == 400, response.text
    message = response.json()["error"]["message"]
    assert message.startswith(f"{name}: this looks like") and looks_like in message.lower(), message
    assert "line 2" not in message and "invalid json" not in message.lower()  # one sentence, not per line
    example = re.search(r"e\.g\. (\{.*\})", message)
    assert example is not None and json.loads(example.group(1)) == {"text": "a great movie", "label": 1}
    assert api.client.get("/v1/files", headers=api.h()).json()["data"] == []  # nothing stored


def test_a_binary_first_line_over_the_line_cap_is_named_as_what_it_is(api: Api) -> None:
    """A gzip file whose first megabyte has no newline byte: the line limit would refuse it by its length;
    the answer says what the file is instead."""
    body = bytes(b for b in os.urandom(LINE_CAP + 4096) if b != 0x0A)
    response = api.upload(b"\x1f\x8b\x08\x00" + body + b"\n", name="big.jsonl.gz")
    assert response.status_code == 400
    message = response.json()["error"]["message"]
    assert "looks like a gzip-compressed file" in message and "line limit" not in message, message


def test_jsonl_whose_first_line_is_broken_still_gets_line_by_line_problems(api: Api) -> None:
    content = b'{"text": "x", "label": 1\n' + OK
    message = api.upload(content, name="almost.jsonl").json()["error"]["message"]
    assert "line 1: invalid JSON" in message and "looks like" not in message


def test_over_the_size_cap_is_413(api: Api) -> None:
    line = b'{"text": "' + b"y" * 1000 + b'", "label": 1}\n'
    response = api.upload(line * (4 * 1024 + 10))  # just over 4 MiB, every line fine
    assert response.status_code == 413 and response.json()["error"]["param"] == "file"
    assert str(4 << 20) in response.json()["error"]["message"]


def _job(api: Api, training_file: str, validation_file: str | None = None) -> httpx.Response:
    body = {"model": "all-MiniLM-L6-v2", "training_file": training_file, "validation_file": validation_file}
    return api.client.post("/v1/fine_tuning/jobs", headers=api.h(), json=body)


def test_labels_that_do_not_match_the_task(api: Api) -> None:
    chat = api.upload_ok(CHAT, name="chat.jsonl")  # causal-LM data for a classification model
    response = _job(api, chat)
    assert response.status_code == 400 and response.json()["error"]["param"] == "training_file"
    assert response.json()["error"]["code"] == "task_mismatch"
    train = api.upload_ok(sst2_bytes("train", 16))  # labels 0/1
    valid = api.upload_ok(b'{"text": "a", "label": 7}\n{"text": "b", "label": 1}\n', name="valid.jsonl")
    response = _job(api, train, valid)
    assert response.status_code == 400 and response.json()["error"]["param"] == "validation_file"
    assert "7" in response.json()["error"]["message"]
    strings = api.upload_ok(b'{"text": "a", "label": "pos"}\n', name="strings.jsonl")
    response = _job(api, train, strings)  # integer labels in training, string labels in validation
    assert response.status_code == 400 and response.json()["error"]["param"] == "validation_file"


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    """A real `sgft serve` (uvicorn) on SQLite with an 8 MiB upload cap."""
    yield from serve_sqlite(
        tmp_path_factory.mktemp("badinput"), "streamer", SGFT_MAX_UPLOAD_BYTES=str(8 << 20)
    )


def _peak_rss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1])
    raise AssertionError("no VmHWM")


@pytest.mark.integration
def test_one_gigabyte_line_is_refused_early_without_buffering(server: Stack) -> None:
    boundary = "sgftboundary"
    head = (
        f'--{boundary}\r\nContent-Disposition: form-data; name="purpose"\r\n\r\nfine-tune\r\n'
        f'--{boundary}\r\nContent-Disposition: form-data; name="file"; filename="huge.jsonl"\r\n'
        "Content-Type: application/jsonl\r\n\r\n"
    ).encode()
    total = 1 << 30
    sent = 0

    def body() -> Iterator[bytes]:  # 1 GiB of one JSON string with no newline, 1 MiB at a time
        nonlocal sent
        yield head + b'{"text": "'
        chunk = b"z" * (1 << 20)
        while sent < total:
            sent += len(chunk)
            yield chunk
        yield f'", "label": 1}}\n\r\n--{boundary}--\r\n'.encode()

    pid = server.procs["api"].pid
    before = _peak_rss_kib(pid)
    headers = {
        "Authorization": f"Bearer {server.key}",
        "Content-Type": f"multipart/form-data; boundary={boundary}",
    }
    response = httpx.post(f"{server.url}/v1/files", content=body(), headers=headers, timeout=120)
    assert response.status_code in (400, 413), response.text
    error = response.json()["error"]
    assert error["param"] == "file"
    assert "line 1" in error["message"] or str(8 << 20) in error["message"]
    assert sent < 64 << 20, f"the server read {sent >> 20} MiB before refusing"
    grown = _peak_rss_kib(pid) - before
    assert grown < 64 * 1024, f"the API's peak memory grew by {grown >> 10} MiB"
    assert json.loads(httpx.get(f"{server.url}/healthz").text)["status"] == "ok"
