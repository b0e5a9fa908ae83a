"""The KafkaSource trigger, served by functions-framework as deployed, on the real engine."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from datetime import UTC, datetime

import pytest
from starlette.testclient import TestClient
from support import (
    cloud_event_client,
    count_final,
    kafka_source_headers,
    view_record,
    views_detached,
)

from clickhouse.store import ViewStore
from functions.settings import Settings


@pytest.fixture
def sink_client(settings: Settings, store: ViewStore) -> Iterator[TestClient]:
    with cloud_event_client(settings, store) as client:
        yield client


def test_valid_event_is_stored_then_2xx(
    sink_client: TestClient, settings: Settings, store: ViewStore
) -> None:
    user, movie = uuid.uuid4(), uuid.uuid4()
    record = view_record(user, movie, 9_000, datetime(2026, 11, 21, 8, 0, tzinfo=UTC))
    key, value = record.to_kafka()
    headers = kafka_source_headers(2, 17, key.decode(), settings.views_topic)
    response = sink_client.post("/", content=value, headers=headers)
    assert 200 <= response.status_code < 300
    assert count_final(store, "views", user) == 1
    # KafkaSource redelivers after a lost answer: same event, no new row.
    assert sink_client.post("/", content=value, headers=headers).status_code < 300
    assert count_final(store, "views", user) == 1


@pytest.mark.parametrize(
    ("body", "reason"),
    [
        (b"{not json", "invalid_json"),
        (b'{"schema_version": 1, "event_id": "x"}', "schema_violation"),
        (b"", "empty"),
    ],
)
def test_poison_is_4xx_problem(
    sink_client: TestClient, settings: Settings, body: bytes, reason: str
) -> None:
    headers = kafka_source_headers(0, 5, str(uuid.uuid4()), settings.views_topic)
    response = sink_client.post("/", content=body, headers=headers)
    assert response.status_code == 422
    assert response.headers["content-type"] == "application/problem+json"
    problem = response.json()
    assert problem["reason"] == reason
    assert problem["id"] == "partition:0/offset:5"


def test_event_without_kafka_identity_is_400(sink_client: TestClient) -> None:
    headers = kafka_source_headers(0, 1, "k", "views") | {"ce-id": "some-id"}
    response = sink_client.post("/", content=b"{}", headers=headers)
    assert response.status_code == 400
    assert response.headers["content-type"] == "application/problem+json"


def test_failing_clickhouse_is_5xx_and_stores_nothing(settings: Settings, store: ViewStore) -> None:
    user = uuid.uuid4()
    record = view_record(user, uuid.uuid4(), 1, datetime(2026, 11, 21, 8, 0, tzinfo=UTC))
    key, value = record.to_kafka()
    with views_detached(store) as broken:
        with cloud_event_client(
            settings.model_copy(update={"clickhouse_database": broken.database}), broken
        ) as client:
            response = client.post(
                "/", content=value, headers=kafka_source_headers(0, 1, key.decode(), "views")
            )
        assert response.status_code == 503
        assert response.headers["content-type"] == "application/problem+json"
    assert count_final(broken, "views", user) == 0
