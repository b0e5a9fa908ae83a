"""The OpenAPI 3.1 document of the ingest function, generated from its route table and models.

Nothing here is written by hand per endpoint, and nothing here is read by dispatch: paths,
methods, models, permissions and limits all come from the table in ``routes.py`` as
``configure`` resolves it for the settings. ``python -m functions.http.openapi`` writes
``docs/openapi.json`` for the default settings; a test fails when that file is stale, another
when the document and the running routes disagree.
"""

from __future__ import annotations

import sys
from http import HTTPStatus
from pathlib import Path
from typing import Any

import orjson
from pydantic import BaseModel
from pydantic.json_schema import JsonSchemaMode, models_json_schema

from functions.http.routes import ConfiguredRoute, Operation, Route, configure
from functions.problems import PROBLEM_CONTENT_TYPE, Problem
from functions.settings import Settings

__all__ = ["OPENAPI_PATH", "openapi_document", "render_openapi"]

OPENAPI_PATH = Path(__file__).resolve().parents[2] / "docs" / "openapi.json"

_SECURITY_SCHEME = "bearerAuth"


def _error_statuses(operation: Operation) -> list[int]:
    statuses = set(operation.errors)
    if operation.permission is not None:
        statuses |= {401, 403, 503}  # 503: the signing keys could not be fetched
        statuses.add(429)  # beyond the caller's share (fair_share.py)
    if operation.body is not None:
        statuses |= {400, 413, 415, 422}
    if operation.path_parameters is not None or operation.query_parameters is not None:
        statuses.add(422)
    return sorted(statuses)


_ERROR_HEADERS = {
    401: {
        "WWW-Authenticate": {
            "required": True,
            "description": 'RFC 6750: `Bearer` without a token, `Bearer error="invalid_token"` '
            "with a bad one.",
            "schema": {"type": "string"},
        }
    },
    429: {
        "Retry-After": {
            "required": True,
            "description": "Seconds until the caller's next request is admitted.",
            "schema": {"type": "string", "pattern": "^[0-9]+$"},
        }
    },
    503: {
        "Retry-After": {
            "required": True,
            "description": "Seconds to wait before retrying.",
            "schema": {"type": "string", "pattern": "^[0-9]+$"},
        }
    },
}


def _parameters(model: type[BaseModel], location: str) -> list[dict[str, Any]]:
    schema = model.model_json_schema()
    required = set(schema.get("required", []))
    parameters = []
    for name, field_schema in schema["properties"].items():
        field_schema = dict(field_schema)
        description = field_schema.pop("description", "")
        field_schema.pop("title", None)
        parameters.append(
            {
                "name": name,
                "in": location,
                "required": name in required,
                "description": description,
                "schema": field_schema,
            }
        )
    return parameters


def _component_schemas(
    routes: list[ConfiguredRoute],
) -> tuple[dict[tuple[Any, JsonSchemaMode], dict[str, Any]], dict[str, Any]]:
    wanted: dict[tuple[type[BaseModel], JsonSchemaMode], None] = {(Problem, "serialization"): None}
    for configured in routes:
        if configured.body_model is not None:
            wanted[(configured.body_model, "validation")] = None
        for model in configured.route.operation.success.values():
            if model is not None:
                wanted[(model, "serialization")] = None
    refs, definitions = models_json_schema(
        list(wanted), ref_template="#/components/schemas/{model}"
    )
    return refs, definitions.get("$defs", {})


def openapi_document(settings: Settings, routes: tuple[Route, ...] | None = None) -> dict[str, Any]:
    """The OpenAPI 3.1 document of ``routes`` (default: the route table) for ``settings``."""
    configured_routes = [c for c in configure(settings, routes)[1] if c.route.documented]
    refs, schemas = _component_schemas(configured_routes)

    paths: dict[str, dict[str, Any]] = {}
    for configured in configured_routes:
        route = configured.route
        operation = route.operation
        document: dict[str, Any] = {
            "operationId": operation.operation_id,
            "summary": operation.summary,
            "responses": {},
        }
        permission = configured.permission
        if permission is not None:
            document["security"] = [{_SECURITY_SCHEME: [permission]}]
            document["description"] = f"Needs a token with the `{permission}` permission."
        else:
            document["security"] = []
        parameters = []
        if operation.path_parameters is not None:
            parameters += _parameters(operation.path_parameters, "path")
        if operation.query_parameters is not None:
            parameters += _parameters(operation.query_parameters, "query")
        if parameters:
            document["parameters"] = parameters
        if configured.body_model is not None:
            document["requestBody"] = {
                "required": True,
                "description": f"At most {configured.max_body_bytes} bytes of UTF-8 JSON.",
                "content": {
                    "application/json": {"schema": refs[(configured.body_model, "validation")]}
                },
            }
        for status, model in operation.success.items():
            schema = {} if model is None else refs[(model, "serialization")]
            document["responses"][str(status)] = {
                "description": (model.__doc__ if model is not None else None)
                or HTTPStatus(status).phrase,
                "content": {operation.media_type: {"schema": schema}},
            }
        for status in _error_statuses(operation):
            response: dict[str, Any] = {
                "description": HTTPStatus(status).phrase,
                "content": {PROBLEM_CONTENT_TYPE: {"schema": refs[(Problem, "serialization")]}},
            }
            if status in _ERROR_HEADERS:
                response["headers"] = _ERROR_HEADERS[status]
            document["responses"][str(status)] = response
        paths.setdefault(route.path, {})[route.method.lower()] = document

    return {
        "openapi": "3.1.0",
        "info": {
            "title": "Watch-progress ingest",
            "version": "1.0.0",
            "description": "Where viewers are in movies: players post positions, which go to "
            "Kafka and on to ClickHouse. A 2xx answer means the event is in Kafka. Errors are "
            "RFC 9457 problem documents. Bodies are strict JSON: unknown fields, strings for "
            "numbers and non-canonical UUIDs are rejected.",
        },
        "paths": paths,
        "components": {
            "schemas": schemas,
            "securitySchemes": {
                _SECURITY_SCHEME: {
                    "type": "http",
                    "scheme": "bearer",
                    "bearerFormat": "JWT",
                    "description": f"A {settings.jwt_algorithm} JWT whose `sub` is the viewer's "
                    f"UUID and whose `{settings.jwt_permissions_claim}` claim lists the "
                    "operation's permission.",
                }
            },
        },
    }


def render_openapi(document: dict[str, Any]) -> bytes:
    return orjson.dumps(document, option=orjson.OPT_INDENT_2 | orjson.OPT_SORT_KEYS)


def main() -> None:
    # The committed document shows the defaults, whatever this shell's environment says.
    defaults = Settings.model_construct()
    OPENAPI_PATH.write_bytes(render_openapi(openapi_document(defaults)) + b"\n")
    sys.stdout.write(f"wrote {OPENAPI_PATH}\n")


if __name__ == "__main__":
    main()
