"""Issue 24: a property test that no input produces a 500, aimed where the 500s were (test_fuzz.py drives
every route from the OpenAPI schema; this one aims Hypothesis at what a schema does not describe): cursors
and limits of every list route, the create-job body's free-form parts (hyperparameters values and shapes,
method shapes, seed, suffix, metadata) and the labels of an uploaded file, drawn from huge integers,
non-ASCII digits, NUL and the other wrong JSON types."""

from __future__ import annotations

import io
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from rules.hparam_bounds import BOOLS, CHOICES, NUMBER_BOUNDS
from tests.service.api_fixtures import Api, running_api, sst2_bytes

# Deterministic, no example database: the same cases on every run (about 15 s on 2 shared cores).
RUN = settings(
    max_examples=400,
    deadline=None,
    derandomize=True,
    database=None,
    suppress_health_check=list(HealthCheck),
)


# Strings that str.isdigit() takes: decimal digits of any script ('١٢٣', '໒') and others int() refuses ('²').
def mostly(common: st.SearchStrategy[Any], rare: st.SearchStrategy[Any]) -> st.SearchStrategy[Any]:
    """`common` three times in four, `rare` otherwise (st.one_of picks its branches evenly)."""
    return st.integers(min_value=0, max_value=3).flatmap(lambda i: rare if i == 3 else common)


digits = st.text(st.characters(categories=["Nd", "No"]).filter(str.isdigit), min_size=1, max_size=12)
huge_ints = st.integers(min_value=2**63 - 2, max_value=10**4000) | st.integers(max_value=-(2**63)).map(
    lambda n: n * 10**300
)
numbers = st.integers() | huge_ints | st.floats(allow_nan=True, allow_infinity=True)
scalars = st.none() | st.booleans() | numbers | st.text(max_size=20) | digits | st.just("a\x00b")
json_values = st.recursive(
    scalars,
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=8), inner, max_size=3),
    max_leaves=6,
)
cursors = (
    digits
    | st.integers(min_value=0, max_value=10**60).map(str)
    | st.text(min_size=1, max_size=30)
    | st.builds(lambda tail: f"ftevent-abc-{tail}", digits | st.text(max_size=8))
)
# Mostly valid (a wrong limit is refused before the cursor is read), and wrong ones of every kind.
limits = mostly(
    st.none() | st.integers(min_value=1, max_value=100).map(str),
    st.integers(min_value=-(10**30), max_value=10**30).map(str) | digits | st.text(max_size=6),
)
known_hp = st.sampled_from([*NUMBER_BOUNDS, *CHOICES, *BOOLS, "target_modules"])
hp_names = st.one_of(known_hp, known_hp, st.text(max_size=10))  # known names mostly: their values are checked
hp_values = st.one_of(numbers, huge_ints, json_values)
hp_dicts = st.dictionaries(hp_names, hp_values, min_size=1, max_size=4)
hyperparameters = mostly(hp_dicts, json_values)
method_types = st.sampled_from(["sparsegrad", "supervised", "lora", "full", "meprop"]) | json_values
sections = st.builds(lambda hp: {"hyperparameters": hp}, hyperparameters | json_values)
shaped = st.builds(
    lambda kind, section: {"type": kind, **({kind: section} if isinstance(kind, str) else {})},
    method_types,
    mostly(sections, json_values),
)
methods = mostly(shaped, st.none() | json_values)


def _no_500(response: Any, what: object) -> None:
    assert response.status_code < 500, (what, response.status_code, response.text[:300])


@pytest.fixture
def api(tmp_path: Path) -> Iterator[Api]:
    """The app on SQLite, with no job rate limit to speak of (every example may create a job)."""
    yield from running_api(tmp_path, job_rate_limit=1_000_000)


def _file_and_job(api: Api) -> dict[str, str]:
    file_id = api.upload_ok(sst2_bytes("train", 8))
    created = api.client.post(
        "/v1/fine_tuning/jobs", headers=api.h(), json={"model": "all-MiniLM-L6-v2", "training_file": file_id}
    )
    assert created.status_code == 200, created.text
    return {"file": file_id, "job": created.json()["id"]}


@pytest.fixture
def ids(api: Api) -> dict[str, str]:
    return _file_and_job(api)


def _probe_lists(api: Api, job_id: str) -> None:
    routes = [
        "/v1/files",
        "/v1/fine_tuning/jobs",
        f"/v1/fine_tuning/jobs/{job_id}/events",
        f"/v1/fine_tuning/jobs/{job_id}/checkpoints",
    ]

    @RUN
    @given(route=st.sampled_from(routes), after=cursors, limit=limits)
    def probe(route: str, after: str, limit: str | None) -> None:
        params = {k: v for k, v in {"after": after, "limit": limit}.items() if v is not None}
        _no_500(api.client.get(route, params=params, headers=api.h()), params)

    probe()


def test_no_cursor_or_limit_gives_a_500(api: Api, ids: dict[str, str]) -> None:
    _probe_lists(api, ids["job"])


@pytest.mark.integration
def test_no_cursor_or_limit_gives_a_500_on_postgresql(pg_api: Api) -> None:
    """The same on PostgreSQL, which refuses a NUL in any string and an integer past 64 bits."""
    _probe_lists(pg_api, _file_and_job(pg_api)["job"])


def test_no_create_job_body_gives_a_500(api: Api, ids: dict[str, str]) -> None:
    @RUN
    @given(
        hp=hyperparameters,
        method=methods,
        # Valid mostly, so that the body gets past its schema to the hyperparameters and the method.
        seed=mostly(st.integers(min_value=0, max_value=2**31 - 1), numbers | json_values),
        suffix=mostly(st.from_regex(r"[A-Za-z0-9_.-]{0,12}", fullmatch=True), json_values),
        metadata=mostly(
            st.dictionaries(st.text(max_size=64), st.text(max_size=512), max_size=16),
            st.dictionaries(st.text(max_size=70), st.text(max_size=600) | json_values, max_size=17)
            | json_values,
        ),
        fields=st.sets(st.sampled_from(["seed", "suffix", "metadata"])),  # with hyperparameters and method
        path=st.sampled_from(["/v1/fine_tuning/jobs", "/v1/fine_tuning/jobs/estimate"]),
    )
    def probe(
        hp: object,
        method: object,
        seed: object,
        suffix: object,
        metadata: object,
        fields: set[str],
        path: str,
    ) -> None:
        drawn = {
            "hyperparameters": hp,
            "method": method,
            "seed": seed,
            "suffix": suffix,
            "metadata": metadata,
        }
        fields |= {"hyperparameters", "method"}
        body = {"model": "all-MiniLM-L6-v2", "training_file": ids["file"]} | {k: drawn[k] for k in fields}
        content = json.dumps(body, default=str).encode()  # NaN and Infinity as Python's json writes them
        headers = api.h() | {"Content-Type": "application/json"}
        _no_500(api.client.post(path, headers=headers, content=content), body)

    probe()


def test_no_uploaded_label_gives_a_500(api: Api) -> None:
    long_digits = st.integers(min_value=4000, max_value=6000).map(lambda n: "1" + "0" * n)  # raw JSON tokens

    @RUN
    @given(
        labels=st.lists(json_values.map(lambda v: json.dumps(v)) | long_digits, min_size=1, max_size=4),
        name=st.text(min_size=1, max_size=20),
    )
    def probe(labels: list[str], name: str) -> None:
        content = "".join(
            f'{{"text": "t{i}", "label": {label}}}\n' for i, label in enumerate(labels)
        ).encode()
        files = {"file": (name, io.BytesIO(content), "application/jsonl")}
        response = api.client.post("/v1/files", headers=api.h(), files=files, data={"purpose": "fine-tune"})
        _no_500(response, labels)
        if response.status_code == 200:  # and what was stored downloads, whatever its name
            file_id = response.json()["id"]
            _no_500(api.client.get(f"/v1/files/{file_id}/content", headers=api.h()), name)
            assert api.client.delete(f"/v1/files/{file_id}", headers=api.h()).status_code == 200

    probe()
