"""The OpenAPI schema as the API answers: FastAPI's, less the 422 it adds to every route with parameters.

This API answers a request it cannot parse with a 400 in OpenAI's error shape (api.errors), never a 422, so
the generated 422 responses and their HTTPValidationError schemas are removed. The statuses a route can
answer are declared where the route is (`responses=error_responses(...)`).
"""

from __future__ import annotations

from typing import Any

from fastapi import FastAPI


def install_openapi(app: FastAPI) -> None:
    generate = app.openapi

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is None:
            schema = generate()
            for path in schema.get("paths", {}).values():
                for operation in path.values():
                    operation.get("responses", {}).pop("422", None)
            components = schema.get("components", {}).get("schemas", {})
            for name in ("HTTPValidationError", "ValidationError"):
                components.pop(name, None)
        return app.openapi_schema or generate()

    app.openapi = openapi  # type: ignore[method-assign]
