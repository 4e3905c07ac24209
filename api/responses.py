"""Pre-serialised JSON for the hot GET routes.

A route that returns a Response skips FastAPI's response-model pass (validate the returned model again, dump
it to Python, encode it, `json.dumps` it: ~0.17 ms a job on the 2-core VM, 20 times over for a page). These
routes go further and skip the models too: they serialise the public fields (api.schemas.job_fields /
event_fields, the dicts the models are validated from) with pydantic's serialiser, which gives the bytes
`model_dump_json()` of the model would give (tests/service/test_reads.py checks it). The routes keep
`response_model=`, so the OpenAPI schema is unchanged; the body is the same JSON FastAPI sent (a float may
be spelled differently, `0.00001` for `1e-05`: the same number; NaN is null, as before).
"""

from __future__ import annotations

from typing import Any

from pydantic_core import to_json
from starlette.responses import Response


class JSONBytes(Response):
    """A body that is already JSON (`application/json`, like JSONResponse)."""

    media_type = "application/json"


def json_bytes(value: Any) -> bytes:
    """`value` (dicts, lists, str, numbers, None, models) as the JSON pydantic writes for a model."""
    return to_json(value, inf_nan_mode="null")


def object_response(fields: dict[str, Any]) -> JSONBytes:
    """One public object from its fields."""
    return JSONBytes(json_bytes(fields))


def page_response(items: list[dict[str, Any]], has_more: bool) -> JSONBytes:
    """A ListPage of public objects given by their fields (the JSON of ListPage(data=models, ...))."""
    first, last = (items[0]["id"], items[-1]["id"]) if items else (None, None)
    page = {"object": "list", "data": items, "has_more": has_more, "first_id": first, "last_id": last}
    return JSONBytes(json_bytes(page))
