"""OpenTelemetry: one trace from the request to the insert, on the real broker and engine, with
the SDK's in-memory span exporter and metric reader."""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import pytest
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import InMemoryMetricReader
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind, StatusCode
from support import (
    RunningSink,
    bearer,
    cloud_event_client,
    consume_all,
    count_final,
    eventually,
    ingest_client,
    kafka_source_headers,
    produce_raw,
    seed_body,
    view_record,
)

from clickhouse.store import ViewStore
from functions import telemetry
from functions.errors import DeliveryFailed
from functions.settings import Settings
from functions.sink.dlq import DeadLetterPublisher
from functions.sink.triggers.cloudevent import CloudEventSink
from functions.sink.triggers.openfaas import ConnectorSink

# A caller's W3C context, sampled.
CALLER_TRACE = "4bf92f3577b34da6a3ce929d0e0e4736"
CALLER_SPAN = "00f067aa0ba902b7"
CALLER = {"traceparent": f"00-{CALLER_TRACE}-{CALLER_SPAN}-01"}


@dataclass
class Captured:
    spans: InMemorySpanExporter
    metrics: InMemoryMetricReader

    def named(self, name: str) -> list[ReadableSpan]:
        return [s for s in self.spans.get_finished_spans() if s.name == name]

    def metric_points(self) -> dict[str, list[Any]]:
        points: dict[str, list[Any]] = {}
        data = self.metrics.get_metrics_data()
        assert data is not None
        for resource in data.resource_metrics:
            for scope in resource.scope_metrics:
                for metric in scope.metrics:
                    points.setdefault(metric.name, []).extend(metric.data.data_points)
        return points


@pytest.fixture
def captured() -> Iterator[Captured]:
    spans = InMemorySpanExporter()
    metrics = InMemoryMetricReader()
    tracer_provider = TracerProvider()
    tracer_provider.add_span_processor(SimpleSpanProcessor(spans))
    meter_provider = MeterProvider(metric_readers=[metrics])
    for function in ("ingest", "sink"):
        telemetry.use_providers(function, tracer_provider, meter_provider)
    try:
        yield Captured(spans, metrics)
    finally:
        telemetry.reset()
        meter_provider.shutdown()
        tracer_provider.shutdown()


def _hex(number: int, width: int) -> str:
    return f"{number:0{width}x}"


def _linked(batch: ReadableSpan, producer: ReadableSpan) -> bool:
    assert producer.context is not None
    return any(link.context.span_id == producer.context.span_id for link in batch.links)


def _child_of(span: ReadableSpan, parent: ReadableSpan) -> bool:
    assert parent.context is not None and span.parent is not None
    return span.parent.span_id == parent.context.span_id


def test_one_post_is_one_trace_from_request_to_insert(
    captured: Captured, settings: Settings, store: ViewStore
) -> None:
    user, movie = uuid.uuid4(), uuid.uuid4()
    with ingest_client(settings, store) as api, RunningSink(settings, store) as sink:
        answer = api.post(
            "/v1/views",
            json={"movie_id": str(movie), "movie_time_offset": 42_000},
            headers={**bearer(user), **CALLER},
        )
        assert answer.status_code == 202
        eventually(lambda: count_final(store, "views", user) == 1, what="the row")
        eventually(lambda: sink.consumer.batches_committed, what="the commit")
        points = captured.metric_points()  # while the consumer's gauges can be observed
    topic = settings.views_topic

    (server,) = captured.named("POST /v1/views")
    assert server.kind is SpanKind.SERVER
    assert server.context is not None and server.parent is not None
    assert _hex(server.context.trace_id, 32) == CALLER_TRACE
    assert _hex(server.parent.span_id, 16) == CALLER_SPAN
    attributes = dict(server.attributes or {})
    assert attributes["http.request.method"] == "POST"
    assert attributes["http.route"] == "/v1/views"
    assert attributes["http.response.status_code"] == 202
    assert attributes["url.scheme"] == "http"
    # The answer names the server span, so that a client can look its request up.
    version, trace_id, span_id, _flags = answer.headers["traceresponse"].split("-")
    assert (version, trace_id, span_id) == ("00", CALLER_TRACE, _hex(server.context.span_id, 16))

    (producer,) = captured.named(f"send {topic}")
    assert producer.kind is SpanKind.PRODUCER and _child_of(producer, server)
    sent = dict(producer.attributes or {})
    assert sent["messaging.system"] == "kafka"
    assert sent["messaging.destination.name"] == topic
    assert sent["messaging.operation.type"] == "send"
    assert sent["messaging.message.id"] == answer.json()["event_id"]
    assert int(sent["messaging.destination.partition.id"]) in range(6)
    assert sent["messaging.kafka.offset"] == 0

    (batch,) = [s for s in captured.named(f"process {topic}") if _linked(s, producer)]
    assert batch.kind is SpanKind.CONSUMER
    assert dict(batch.attributes or {})["messaging.batch.message_count"] == 1
    (insert,) = [s for s in captured.spans.get_finished_spans() if s.name.startswith("INSERT")]
    assert insert.kind is SpanKind.CLIENT and _child_of(insert, batch)
    inserted = dict(insert.attributes or {})
    assert inserted["db.system.name"] == "clickhouse"
    assert inserted["db.collection.name"] == "canonical_view_lines"
    assert inserted["db.operation.batch.size"] == 1
    (commit,) = captured.named(f"commit {topic}")
    assert _child_of(commit, batch)

    for name in (
        "http.server.request.duration",
        "http.server.active_requests",
        "messaging.client.operation.duration",
        "messaging.client.sent.messages",
        "messaging.client.consumed.messages",
        "messaging.process.duration",
        "db.client.operation.duration",
        "process.memory.usage",
        "ingest.events.accepted",
        "sink.batch.size",
        "sink.rows.inserted",
        "sink.consumer.lag",
        "sink.backoff",
    ):
        assert name in points, name
    (duration,) = points["http.server.request.duration"]
    assert dict(duration.attributes)["http.route"] == "/v1/views"
    assert points["process.memory.usage"][0].value > 0


def test_batch_and_seed_routes_put_each_record_in_the_request_trace(
    captured: Captured, settings: Settings, store: ViewStore
) -> None:
    user = uuid.uuid4()
    event_time = datetime.now(UTC).isoformat()
    events = [
        {"movie_id": str(uuid.uuid4()), "movie_time_offset": 1_000, "event_time": event_time}
        for _ in range(3)
    ]
    events.append({"movie_id": "not a uuid", "movie_time_offset": 1})
    with ingest_client(settings, store) as api:
        batch_answer = api.post("/v1/views:batch", json={"events": events}, headers=bearer(user))
        assert batch_answer.status_code == 207
        seed_answer = api.post(
            "/bigdata-api/v1/producer/views", json=seed_body(user), headers=bearer(user)
        )
        assert seed_answer.status_code == 201
    topic = settings.views_topic

    (batch_server,) = captured.named("POST /v1/views:batch")
    (seed_server,) = captured.named("POST /bigdata-api/v1/producer/views")
    producers = captured.named(f"send {topic}")
    assert sorted(_child_of(p, batch_server) for p in producers) == [False, True, True, True]
    assert sum(_child_of(p, seed_server) for p in producers) == 1
    # Each record carries its own producer span's context.
    records = consume_all(settings.kafka_bootstrap_servers, topic, 4)
    carried = {dict(r.headers() or [])["traceparent"].decode().split("-")[2] for r in records}
    assert carried == {_hex(p.context.span_id, 16) for p in producers if p.context}

    points = captured.metric_points()
    (rejected,) = points["ingest.events.rejected"]
    assert (dict(rejected.attributes), rejected.value) == ({"reason": "invalid"}, 1)
    assert sum(p.value for p in points["ingest.events.accepted"]) == 4


def test_missing_or_garbage_trace_headers_are_stored_and_poison_is_dead_lettered_in_the_trace(
    captured: Captured, settings: Settings, store: ViewStore
) -> None:
    user, movie = uuid.uuid4(), uuid.uuid4()
    valid = [
        view_record(user, movie, ms, datetime(2026, 11, 20, 21, 0, tzinfo=UTC))
        for ms in (1, 2, 3, 4)
    ]
    headers: list[list[tuple[str, bytes]] | None] = [
        None,
        [("traceparent", b"garbage")],
        [("traceparent", b"\xff\xfe not even text")],
        [("traceparent", b"00-00000000000000000000000000000000-0000000000000000-01")],
    ]
    poison = (str(user).encode(), b"{not json")
    produce_raw(
        settings,
        [*(record.to_kafka() for record in valid), poison],
        partition=1,
        headers=[*headers, None],
    )

    with RunningSink(settings, store):
        eventually(lambda: count_final(store, "views", user) == 4, what="every valid record")
        (dead,) = consume_all(settings.kafka_bootstrap_servers, settings.dlq_topic, 1)
    topic = settings.views_topic
    batches = captured.named(f"process {topic}")
    assert all(not batch.links for batch in batches)
    (dead_letter,) = captured.named(f"send {settings.dlq_topic}")
    assert dead_letter.kind is SpanKind.PRODUCER
    assert any(_child_of(dead_letter, batch) for batch in batches)
    assert dict(dead_letter.attributes or {})["messaging.batch.message_count"] == 1
    assert dead_letter.context is not None
    carried = dict(dead.headers() or [])["traceparent"].decode().split("-")[2]
    assert carried == _hex(dead_letter.context.span_id, 16)
    # The fast path was refused: the records were validated in Python, in a span of their own.
    assert captured.named("validate views")
    (dead_letters,) = captured.metric_points()["sink.dead_letters"]
    assert dict(dead_letters.attributes) == {"reason": "invalid_json"}


def test_cloud_event_continues_the_dispatchers_traceparent_and_links_the_producer(
    captured: Captured, settings: Settings, store: ViewStore
) -> None:
    user, movie = uuid.uuid4(), uuid.uuid4()
    record = view_record(user, movie, 9_000, datetime(2026, 11, 21, 8, 0, tzinfo=UTC))
    key, value = record.to_kafka()
    producer_span = "1111111111111111"
    dispatcher_span = "2222222222222222"
    headers = {
        **kafka_source_headers(2, 17, key.decode(), settings.views_topic),
        # The record's own header, as KafkaSource forwards it; and the dispatcher's span.
        "ce-kafkaheadertraceparent": f"00-{CALLER_TRACE}-{producer_span}-01",
        "traceparent": f"00-{CALLER_TRACE}-{dispatcher_span}-01",
    }
    with cloud_event_client(settings, store) as client:
        assert client.post("/", content=value, headers=headers).status_code == 200
        garbage = {**headers, "ce-id": "partition:2/offset:18", "traceparent": "garbage"}
        garbage["ce-kafkaheadertraceparent"] = "garbage"
        assert client.post("/", content=value, headers=garbage).status_code == 200
    assert count_final(store, "views", user) == 1

    continued, fresh = captured.named(f"process {settings.views_topic}")
    assert continued.kind is SpanKind.CONSUMER and continued.parent is not None
    assert _hex(continued.parent.span_id, 16) == dispatcher_span
    assert [_hex(link.context.span_id, 16) for link in continued.links] == [producer_span]
    assert fresh.parent is None and not fresh.links
    inserts = [s for s in captured.spans.get_finished_spans() if s.name.startswith("INSERT")]
    assert any(_child_of(insert, continued) for insert in inserts)


def test_a_crashing_cloud_event_store_ends_its_batch_span_as_an_error(
    captured: Captured, settings: Settings
) -> None:
    def crashing_writer() -> ViewStore:
        raise RuntimeError("the writer could not be built")

    record = view_record(uuid.uuid4(), uuid.uuid4(), 1, datetime(2026, 11, 21, 8, 0, tzinfo=UTC))
    key, value = record.to_kafka()
    sink = CloudEventSink(settings, crashing_writer)
    attributes = {"id": "partition:0/offset:3", "source": f"x#{settings.views_topic}"}
    with pytest.raises(RuntimeError):
        sink.handle({**attributes, "partitionkey": key.decode()}, value)
    (batch,) = captured.named(f"process {settings.views_topic}")
    assert batch.status.status_code is StatusCode.ERROR
    assert batch.attributes is not None
    assert batch.attributes["error.type"] == "RuntimeError"


def test_the_untraced_openfaas_trigger_makes_no_orphan_spans(
    captured: Captured, settings: Settings, store: ViewStore
) -> None:
    # Its calls carry no producer context and start no batch span (docs/observability.md).
    user = uuid.uuid4()
    record = view_record(user, uuid.uuid4(), 1, datetime(2026, 11, 21, 8, 0, tzinfo=UTC))
    key, value = record.to_kafka()
    headers = {"x-topic": settings.views_topic, "x-kafka-partition": "0", "x-kafka-offset": "4"}
    sink = ConnectorSink(settings, lambda: store, DeadLetterPublisher(settings))
    assert sink.handle({**headers, "x-kafka-key": key.decode()}, value).status_code == 200
    assert count_final(store, "views", user) == 1
    assert captured.spans.get_finished_spans() == ()


def test_batch_links_are_bounded_by_the_sdk_link_limit(captured: Captured) -> None:
    sink = telemetry.sink()
    assert sink is not None

    def traced(index: int, flags: str = "01") -> list[tuple[str, str | bytes | None]]:
        return [("traceparent", f"00-{CALLER_TRACE}-{index + 1:016x}-{flags}".encode())]

    # The consumer loop reads every stride-th record's headers, the links come from those.
    stride = sink.header_stride(50_000)
    assert stride == -(-50_000 // 128)
    read = [traced(i) for i in range(50_000)][::stride]
    assert len(sink.links(read)) == len(read) <= sink.max_links == 128
    assert 100 < len(sink.links([traced(i) for i in range(1_000)])) <= 128
    assert sink.links([traced(1, "00")] * 10) == []


def test_a_failed_send_is_an_error_span_counted_as_sent_and_not_accepted(
    captured: Captured,
) -> None:
    ingest = telemetry.ingest()
    assert ingest is not None
    with pytest.raises(DeliveryFailed), ingest.sending("views", "an-event") as send:
        assert dict(send.headers)["traceparent"]
        raise DeliveryFailed("the broker did not acknowledge in time")

    (span,) = captured.named("send views")
    assert span.status.status_code is StatusCode.ERROR
    assert dict(span.attributes or {})["error.type"] == "DeliveryFailed"
    assert [event.name for event in span.events] == ["exception"]
    points = captured.metric_points()
    (sent,) = points["messaging.client.sent.messages"]
    assert (dict(sent.attributes)["error.type"], sent.value) == ("DeliveryFailed", 1)
    (duration,) = points["messaging.client.operation.duration"]
    assert dict(duration.attributes)["error.type"] == "DeliveryFailed"
    assert "ingest.events.accepted" not in points


def test_nothing_is_built_without_an_export_asked_for(
    settings: Settings, store: ViewStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    for name in [n for n in os.environ if n.startswith("OTEL_")]:
        monkeypatch.delenv(name)
    telemetry.reset()
    try:
        assert telemetry.ingest() is None and telemetry.sink() is None
        with ingest_client(settings, store) as api:
            answer = api.post(
                "/v1/views",
                json={"movie_id": str(uuid.uuid4()), "movie_time_offset": 1},
                headers={**bearer(uuid.uuid4()), **CALLER},
            )
        assert answer.status_code == 202 and "traceresponse" not in answer.headers
    finally:
        telemetry.reset()


@pytest.mark.parametrize(
    ("environ", "exporting"),
    [
        ({}, False),
        ({"OTEL_SERVICE_NAME": "x", "OTEL_TRACES_SAMPLER": "traceidratio"}, False),
        ({"OTEL_EXPORTER_OTLP_ENDPOINT": "http://127.0.0.1:4318"}, True),
        ({"OTEL_TRACES_EXPORTER": "console"}, True),
        ({"OTEL_EXPORTER_OTLP_ENDPOINT": "http://x:4318", "OTEL_SDK_DISABLED": "true"}, False),
        ({"OTEL_TRACES_EXPORTER": "none", "OTEL_METRICS_EXPORTER": "none"}, False),
    ],
)
def test_exporting_is_asked_for_by_the_standard_variables(
    environ: dict[str, str], exporting: bool
) -> None:
    assert telemetry.exporting_requested(environ) is exporting


@pytest.mark.parametrize(
    "environ",
    [
        {"OTEL_EXPORTER_OTLP_ENDPOINT": "http://x:4318", "OTEL_EXPORTER_OTLP_PROTOCOL": "grpc"},
        {"OTEL_TRACES_EXPORTER": "zipkin"},
    ],
)
def test_what_the_exporters_cannot_do_is_refused_at_start(environ: dict[str, str]) -> None:
    with pytest.raises(ValueError, match="OTEL_"):
        telemetry.check_configuration(environ)


def test_each_process_is_named_as_the_sdk_names_it(monkeypatch: pytest.MonkeyPatch) -> None:
    # The name the logs and error reports carry, resolved as the traces' resource is.
    monkeypatch.delenv("OTEL_SERVICE_NAME", raising=False)
    monkeypatch.delenv("OTEL_RESOURCE_ATTRIBUTES", raising=False)
    assert [telemetry.service_name(p) for p in ("ingest", "sink", "local")] == [
        "watch-progress-ingest",
        "watch-progress-sink",
        "watch-progress-local",
    ]
    monkeypatch.setenv("OTEL_RESOURCE_ATTRIBUTES", "service.name=from-attributes,team=a")
    assert telemetry.service_name("sink") == "from-attributes"
    monkeypatch.setenv("OTEL_SERVICE_NAME", "from-name")
    assert telemetry.service_name("sink") == "from-name"
