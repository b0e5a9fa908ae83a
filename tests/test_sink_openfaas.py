"""The OpenFaaS Pro kafka-connector trigger, served by functions-framework as deployed, on the
real engine and the real broker (its dead letters)."""

from __future__ import annotations

import base64
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime

import pytest
from functions_framework.aio import _create_asgi_app_with_function
from starlette.testclient import TestClient
from support import consume_all, count_final, functions_main, view_record, views_detached

from clickhouse.store import ViewStore
from functions.readiness import CHECK_TIMEOUT_SECONDS, Readiness
from functions.settings import Settings
from functions.sink.dlq import DeadLetterPublisher
from functions.sink.triggers.openfaas import ConnectorSink, NotAConnectorCall, connector_record


@contextmanager
def _served(
    monkeypatch: pytest.MonkeyPatch, sink: ConnectorSink, store: ViewStore
) -> Iterator[TestClient]:
    """functions/main.py's ``sink_connector`` target as functions-framework serves it, built
    on ``sink`` and with its readiness asking ``store``."""
    main = functions_main(monkeypatch)
    readiness = Readiness({"clickhouse": lambda: store.answers(CHECK_TIMEOUT_SECONDS)})
    monkeypatch.setattr(main, "_connector_sink", lambda: sink)
    monkeypatch.setattr(main, "_sink_readiness", lambda: readiness)
    with TestClient(_create_asgi_app_with_function(main.sink_connector, "http", False)) as client:
        yield client


@pytest.fixture
def connector_client(
    settings: Settings, store: ViewStore, monkeypatch: pytest.MonkeyPatch
) -> Iterator[TestClient]:
    sink = ConnectorSink(settings, lambda: store, DeadLetterPublisher(settings))
    with _served(monkeypatch, sink, store) as client:
        yield client


def _connector_headers(topic: str, partition: int, offset: int, key: str) -> dict[str, str]:
    # As the kafka-connector invokes a function (docs.openfaas.com/openfaas-pro/kafka-events).
    return {
        "X-Topic": topic,
        "X-Kafka-Partition": str(partition),
        "X-Kafka-Offset": str(offset),
        "X-Kafka-Key": key,
        "Content-Type": "text/plain",
    }


def test_a_record_is_stored_once_however_often_it_is_delivered(
    connector_client: TestClient, settings: Settings, store: ViewStore
) -> None:
    user = uuid.uuid4()
    record = view_record(user, uuid.uuid4(), 7_000, datetime(2026, 12, 1, tzinfo=UTC))
    key, value = record.to_kafka()
    headers = _connector_headers(settings.views_topic, 3, 41, key.decode())
    for _ in range(2):
        response = connector_client.post("/", content=value, headers=headers)
        assert (response.status_code, response.json()) == (200, {"status": "stored"})
    assert count_final(store, "views", user) == 1


def test_poison_is_dead_lettered_before_the_answer(
    connector_client: TestClient, settings: Settings
) -> None:
    headers = _connector_headers(settings.views_topic, 0, 9, "not-a-user")
    response = connector_client.post("/", content=b"{not json", headers=headers)
    assert (response.status_code, response.json()) == (200, {"status": "dead_lettered"})
    (dead,) = consume_all(settings.kafka_bootstrap_servers, settings.dlq_topic, 1)
    assert dead.value() == b"{not json"
    assert dict(dead.headers())["dlq.origin.offset"] == b"9"


def test_an_unavailable_store_is_answered_503(
    settings: Settings, store: ViewStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    record = view_record(uuid.uuid4(), uuid.uuid4(), 1, datetime(2026, 12, 1, tzinfo=UTC))
    key, value = record.to_kafka()
    with views_detached(store) as broken:
        sink = ConnectorSink(settings, lambda: broken, DeadLetterPublisher(settings))
        with _served(monkeypatch, sink, broken) as client:
            response = client.post(
                "/", content=value, headers=_connector_headers("views", 0, 1, key.decode())
            )
    assert response.status_code == 503
    assert response.headers["content-type"] == "application/problem+json"


def test_a_call_without_the_connector_headers_is_400(connector_client: TestClient) -> None:
    response = connector_client.post("/", content=b"{}", headers={"X-Topic": "views"})
    assert response.status_code == 400
    assert "X-Kafka-Partition" in response.json()["detail"]


def test_a_base64_key_is_decoded() -> None:
    headers = {
        "x-topic": "views",
        "x-kafka-partition": "1",
        "x-kafka-offset": "2",
        "x-kafka-key": base64.b64encode(b"\x00\xffkey").decode(),
        "x-kafka-key-enc": "b64",
    }
    assert connector_record(headers, b"v").key == b"\x00\xffkey"
    with pytest.raises(NotAConnectorCall):
        connector_record({**headers, "x-kafka-key": "***"}, b"v")


def test_openfaas_probes_are_answered(connector_client: TestClient) -> None:
    assert connector_client.get("/healthz").json() == {"status": "alive"}
    assert connector_client.get("/readyz").json()["status"] == "ready"  # ClickHouse answers
    assert connector_client.get("/other").status_code == 404
