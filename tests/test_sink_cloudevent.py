"""The KafkaSource trigger, served by functions-framework as deployed, on the real engine."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from datetime import UTC, datetime

import pytest
from functions_framework.aio import _create_asgi_app_with_function
from starlette.testclient import TestClient
from support import count_final, view_record

from clickhouse.migrate import apply_migrations
from clickhouse.store import ViewStore
from functions.settings import Settings
from functions.sink.triggers.cloudevent import CloudEventSink


def _client(settings: Settings, store: ViewStore) -> TestClient:
    sink = CloudEventSink(settings, lambda: store)
    return TestClient(_create_asgi_app_with_function(sink.handle_request, "http", False))


@pytest.fixture
def sink_client(settings: Settings, store: ViewStore) -> Iterator[TestClient]:
    with _client(settings, store) as client:
        yield client


def _kafka_source_headers(partition: int, offset: int, key: str, topic: str) -> dict[str, str]:
    # Binary-mode CloudEvent as KafkaSource sends it.
    return {
        "ce-specversion": "1.0",
        "ce-id": f"partition:{partition}/offset:{offset}",
        "ce-source": f"/apis/v1/namespaces/default/kafkasources/views-sink#{topic}",
        "ce-type": "dev.knative.kafka.event",
        "ce-subject": f"partition:{partition}#{offset}",
        "ce-key": key,
        "ce-partitionkey": key,
        "content-type": "application/json",
    }


def test_valid_event_is_stored_then_2xx(
    sink_client: TestClient, settings: Settings, store: ViewStore
) -> None:
    user, movie = uuid.uuid4(), uuid.uuid4()
    record = view_record(user, movie, 9_000, datetime(2026, 11, 21, 8, 0, tzinfo=UTC))
    key, value = record.to_kafka()
    headers = _kafka_source_headers(2, 17, key.decode(), settings.views_topic)
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
    headers = _kafka_source_headers(0, 5, str(uuid.uuid4()), settings.views_topic)
    response = sink_client.post("/", content=body, headers=headers)
    assert response.status_code == 422
    assert response.headers["content-type"] == "application/problem+json"
    problem = response.json()
    assert problem["reason"] == reason
    assert problem["id"] == "partition:0/offset:5"


def test_event_without_kafka_identity_is_400(sink_client: TestClient) -> None:
    headers = _kafka_source_headers(0, 1, "k", "views") | {"ce-id": "some-id"}
    response = sink_client.post("/", content=b"{}", headers=headers)
    assert response.status_code == 400
    assert response.headers["content-type"] == "application/problem+json"


def test_failing_clickhouse_is_5xx_and_stores_nothing(settings: Settings, store: ViewStore) -> None:
    # A database whose views table is detached: every insert fails in the real engine.
    broken_db = f"broken_{uuid.uuid4().hex[:8]}"
    apply_migrations(store.client, broken_db)
    store.client.command(f"DETACH TABLE {broken_db}.views")
    broken = ViewStore(store.client, broken_db, embedded=True)
    user = uuid.uuid4()
    record = view_record(user, uuid.uuid4(), 1, datetime(2026, 11, 21, 8, 0, tzinfo=UTC))
    key, value = record.to_kafka()
    try:
        with _client(
            settings.model_copy(update={"clickhouse_database": broken_db}), broken
        ) as client:
            response = client.post(
                "/", content=value, headers=_kafka_source_headers(0, 1, key.decode(), "views")
            )
        assert response.status_code == 503
        assert response.headers["content-type"] == "application/problem+json"
    finally:
        store.client.command(f"ATTACH TABLE {broken_db}.views")
    assert count_final(broken, "views", user) == 0
