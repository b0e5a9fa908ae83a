"""Property-based fuzzing of the running ingest function from its own OpenAPI document.

Schemathesis generates valid and invalid requests for every documented operation and sends them
over real HTTP to the function served by uvicorn, producing to the real broker and reading the
real engine. Every answer must be documented: no 5xx, a documented status code, content type,
headers and body schema, and schema-violating input must be rejected. The number of examples
is bounded (``FUZZ_EXAMPLES``, default 25 per operation) so that the suite stays short.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from urllib.parse import unquote, urlsplit

import pytest
import schemathesis
from hypothesis import HealthCheck, settings
from localkafka import LocalKafka
from schemathesis.checks import (
    content_type_conformance,
    negative_data_rejection,
    not_a_server_error,
    response_headers_conformance,
    response_schema_conformance,
    status_code_conformance,
)
from support import JWT_SECRET, TEST_DATABASE, bearer, served_ingest

from clickhouse.store import ViewStore
from functions.settings import Settings

EXAMPLES = int(os.environ.get("FUZZ_EXAMPLES", "25"))
VIEWER = uuid.uuid4()
CHECKS = [
    not_a_server_error,
    status_code_conformance,
    content_type_conformance,
    response_headers_conformance,
    response_schema_conformance,
    negative_data_rejection,
]


@pytest.fixture(scope="module")
def served_url(kafka: LocalKafka, store: ViewStore, clickhouse_dsn: str) -> Iterator[str]:
    suffix = uuid.uuid4().hex[:8]
    kafka.create_topics({f"views-fuzz-{suffix}": 2})
    configured = Settings(
        kafka_bootstrap_servers=kafka.bootstrap_servers,
        views_topic=f"views-fuzz-{suffix}",
        clickhouse_dsn=clickhouse_dsn,
        clickhouse_database=TEST_DATABASE,
        jwt_algorithm="HS256",
        jwt_secret=JWT_SECRET,
    )
    with served_ingest(configured, store) as url:
        yield url


@pytest.fixture
def api_schema(served_url: str) -> schemathesis.BaseSchema:
    # The token is the test's to give (a valid one, for a fixed viewer); the 401 paths are
    # covered by test_auth_http.py.
    config = schemathesis.Config.from_dict({"generation": {"with-security-parameters": False}})
    return schemathesis.openapi.from_url(f"{served_url}/openapi.json", config=config)


schema = schemathesis.pytest.from_fixture("api_schema")


@schemathesis.check
def batch_rejects_invalid_events(
    ctx: schemathesis.CheckContext, response: schemathesis.Response, case: schemathesis.Case
) -> bool | None:
    """A batch judges each event alone: invalid input is a 4xx, or a 207 rejecting some event."""
    assert case.meta is not None
    if not case.meta.generation.mode.is_negative or response.status_code >= 400:
        return None
    outcome = response.json()
    if response.status_code != 207 or not outcome["rejected"]:
        raise AssertionError(f"schema-violating batch answered {response.status_code}")
    return None


def _checks(case: schemathesis.Case) -> list[schemathesis.CheckFunction]:
    if case.operation.path == "/v1/views:batch":
        return [
            *(c for c in CHECKS if c is not negative_data_rejection),
            batch_rejects_invalid_events,
        ]
    return CHECKS


@schema.parametrize()
@settings(
    max_examples=EXAMPLES,
    deadline=None,
    database=None,  # no .hypothesis/ directory in the checkout
    suppress_health_check=list(HealthCheck),
)
def test_every_answer_is_documented(case: schemathesis.Case) -> None:
    response = case.call(headers=bearer(VIEWER))
    if response.status_code == 404 and _line_break_in_path(str(response.request.url)):
        # functions-framework routes "/{path:path}", a regex that stops at a line break: such a
        # path gets the framework's own text/plain 404 before the function is called at all.
        return
    case.validate_response(response, checks=_checks(case))


def _line_break_in_path(url: str) -> bool:
    path = unquote(urlsplit(url).path)
    return "\n" in path or "\r" in path
