"""Property-based fuzzing of every route in the OpenAPI schema (schemathesis), authenticated as a tenant that
owns a file and a job: no 5xx, every status answered is documented for its route, and every response
conforms to its documented schema and content type.

Each operation's strategy is driven by Hypothesis directly (schemathesis' lazy pytest fixtures do not run on
pytest 9); failures of all operations are collected and reported together."""

from __future__ import annotations

import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings
from schemathesis.checks import (
    content_type_conformance,
    not_a_server_error,
    response_schema_conformance,
    status_code_conformance,
)

from tests.service.api_fixtures import Api, sst2_bytes

EXAMPLES = 10  # per operation: ~25 operations, about a minute on 2 shared cores
CHECKS = [not_a_server_error, status_code_conformance, response_schema_conformance, content_type_conformance]


@pytest.mark.integration
def test_no_server_errors_and_responses_match_the_schema(api: Api) -> None:
    file_id = api.upload_ok(sst2_bytes("train", 8))
    body = {"model": "all-MiniLM-L6-v2", "training_file": file_id}
    assert api.client.post("/v1/fine_tuning/jobs", headers=api.h(), json=body).status_code == 200
    schema = schemathesis.openapi.from_asgi("/openapi.json", api.client.app)
    operations = [result.ok() for result in schema.get_all_operations()]
    assert len(operations) >= 20
    failures: list[str] = []
    for operation in operations:

        @given(case=operation.as_strategy())
        @settings(
            max_examples=EXAMPLES,
            deadline=None,
            suppress_health_check=list(HealthCheck),
            derandomize=True,
            database=None,
        )
        def fuzz(case: schemathesis.Case) -> None:
            if case.query and str(case.query.get("stream", "")).lower() in ("true", "1"):
                case.query["stream"] = (
                    "false"  # a live job's event stream never ends; its JSON twin is fuzzed
                )
            case.call_and_validate(headers=api.h(), checks=CHECKS)

        try:
            fuzz()
        except (
            Exception,
            BaseExceptionGroup,
        ) as exc:  # collected: every operation fuzzed, all failures shown
            failures.append(f"{operation.label}: {str(exc)[:1500]}")
    assert not failures, "\n\n".join(failures)


def test_every_error_status_is_documented_with_the_error_body(api: Api) -> None:
    schema = api.client.app.openapi()  # type: ignore[attr-defined]
    for path, operations in schema["paths"].items():
        for method, operation in operations.items():
            responses = operation["responses"]
            assert "422" not in responses, f"{method} {path}: this API answers 400, never 422"
            assert "400" in responses, f"{method} {path}"
            if path.startswith("/v1/"):
                assert {"401", "503"} <= set(responses), f"{method} {path}"
            for status, response in responses.items():
                if status.startswith("2") or (path, status) == ("/readyz", "503"):
                    continue  # /readyz's 503 is its Readiness body, naming what is down
                ref = response["content"]["application/json"]["schema"]["$ref"]
                assert ref.endswith("/ErrorResponse"), f"{method} {path} {status}: {ref}"
    assert "HTTPValidationError" not in schema["components"]["schemas"]
