"""The OpenAPI document: valid 3.1, fresh on disk, and in agreement with the running routes."""

from __future__ import annotations

import re
import uuid
from typing import Any

import jsonschema_rs
import orjson
import pytest

# Schemathesis's copy of the official OpenAPI 3.1 meta-schema (no network needed).
from schemathesis.specs.openapi.definitions import OPENAPI_31
from starlette.testclient import TestClient
from support import bearer, ingest_client

from clickhouse.store import ViewStore
from functions.http.app import path_pattern
from functions.http.docs_page import DOCS_POLICY
from functions.http.openapi import OPENAPI_PATH, openapi_document, render_openapi
from functions.http.routes import ROUTES
from functions.settings import Settings

METHODS = ("GET", "POST", "PUT", "PATCH", "DELETE")


@pytest.fixture
def served(api: TestClient) -> dict[str, Any]:
    response = api.get("/openapi.json")
    assert response.status_code == 200
    assert response.headers["content-type"] == "application/json"
    document: dict[str, Any] = response.json()
    return document


def test_document_is_valid_openapi_3_1(served: dict[str, Any]) -> None:
    assert served["openapi"] == "3.1.0"
    jsonschema_rs.validator_for(OPENAPI_31).validate(served)
    for name, schema in served["components"]["schemas"].items():
        assert jsonschema_rs.meta.is_valid(schema), name


def test_committed_document_is_fresh() -> None:
    generated = render_openapi(openapi_document(Settings.model_construct()))
    assert OPENAPI_PATH.read_bytes() == generated + b"\n", "run: python -m functions.http.openapi"


def test_served_document_is_generated_from_the_running_settings(
    served: dict[str, Any], settings: Settings
) -> None:
    assert served == orjson.loads(orjson.dumps(openapi_document(settings)))


def test_configured_limits_are_in_the_document(settings: Settings, store: ViewStore) -> None:
    narrow = settings.model_copy(
        update={
            "max_batch_events": 7,
            "max_movie_time_offset_ms": 60_000,
            "jwt_write_permission": "w",
        }
    )
    with ingest_client(narrow, store) as client:
        document = client.get("/openapi.json").json()
    schemas = document["components"]["schemas"]
    assert schemas["ViewBatchIn"]["properties"]["events"]["maxItems"] == 7
    assert schemas["ViewEventIn"]["properties"]["movie_time_offset"]["maximum"] == 60_000
    assert document["paths"]["/v1/views"]["post"]["security"] == [{"bearerAuth": ["w"]}]


def _concrete(template: str) -> str:
    return re.sub(r"\{\w+\}", lambda _: str(uuid.uuid4()), template)


def test_document_and_running_routes_agree(api: TestClient, served: dict[str, Any]) -> None:
    documented = {
        (method.upper(), path) for path, item in served["paths"].items() for method in item
    }
    assert documented == {(route.method, route.path) for route in ROUTES if route.documented}
    headers = bearer(uuid.uuid4())
    for path, item in served["paths"].items():
        url = _concrete(path)
        for method in METHODS:
            response = api.request(method, url, headers=headers, json={})
            operation = item.get(method.lower())
            if operation is not None:
                # Reached its handler: whatever it answers is documented, and no router 404.
                assert str(response.status_code) in operation["responses"], (method, path)
                if response.status_code == 404:
                    assert not response.json()["detail"].startswith("no route"), path
            else:
                assert response.status_code == 405, (method, path)
                assert set(response.headers["allow"].split(", ")) == {m.upper() for m in item}
    assert api.get("/v1/undocumented", headers=headers).status_code == 404


def test_path_templates_match_one_segment() -> None:
    pattern = path_pattern("/v1/views/{movie_id}/position")
    assert pattern.fullmatch("/v1/views/abc/position")
    assert not pattern.fullmatch("/v1/views/a/b/position")
    assert not pattern.fullmatch("/v1/views//position")
    assert path_pattern("/v1/views:batch").fullmatch("/v1/views:batch")
    assert not path_pattern("/openapi.json").fullmatch("/openapiXjson")


def test_docs_page_loads_everything_from_this_origin(api: TestClient) -> None:
    response = api.get("/docs")
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/html")
    assert response.headers["content-security-policy"] == DOCS_POLICY
    loaded = re.findall(r"(?:src|href)=\"([^\"]*)\"", response.text)
    assert loaded, "the page loads Swagger UI"
    for url in loaded:
        assert url.startswith("/") and not url.startswith("//"), url
        asset = api.get(url)
        assert asset.status_code == 200, url
        assert "public" in asset.headers["cache-control"]
    assert "<script>" not in response.text, "no inline script: the policy forbids it"


def test_docs_policy_allows_this_origin_only() -> None:
    directives = dict(d.split(" ", 1) for d in DOCS_POLICY.split("; "))
    assert directives.pop("default-src") == "'none'"
    assert directives.pop("frame-ancestors") == "'none'"
    assert directives.pop("img-src") == "'self' data:"
    for source in directives.values():
        assert source in ("'self'", "'none'"), source


def test_docs_page_runs_the_locked_swagger_ui_on_the_generated_document(api: TestClient) -> None:
    bundle = api.get("/docs/swagger-ui-bundle.js")
    assert bundle.headers["content-type"].startswith("text/javascript")
    version = re.search(r'PACKAGE_VERSION:"(\d+)\.', bundle.text)
    assert version is not None and int(version.group(1)) >= 5, "Swagger UI 5 renders OpenAPI 3.1"
    initializer = api.get("/docs/swagger-initializer.js").text
    assert 'url: "/openapi.json"' in initializer
    assert "persistAuthorization: false" in initializer


def test_docs_page_serves_no_other_file(api: TestClient) -> None:
    for name in ("index.html", "swagger-editor-bundle.js", "..%2Fdocs_page.py", "LICENSE"):
        response = api.get(f"/docs/{name}")
        assert response.status_code == 404, name
        assert response.headers["content-type"] == "application/problem+json"


def test_seed_service_paths_are_aliases_not_operations(
    api: TestClient, served: dict[str, Any]
) -> None:
    assert api.get("/bigdata-api/openapi.json").json() == served
    page = api.get("/bigdata-api/openapi")
    assert page.content == api.get("/docs").content
    assert page.headers["content-security-policy"] == DOCS_POLICY
    assert not any(path.startswith("/bigdata-api/openapi") for path in served["paths"])
    assert not any(path.startswith("/docs/") for path in served["paths"])
