"""Over the wire: `python -m functions.local` exports one connected trace and the metrics over
OTLP/HTTP to a real OpenTelemetry Collector (built once into .local/otelcol/)."""

from __future__ import annotations

import uuid
from pathlib import Path

import httpx
import pytest
from localkafka import LocalKafka
from localotelcol import LocalCollector, attributes, metric_names, spans
from support import bearer, eventually, local_host

CALLER_TRACE = "0af7651916cd43dd8448eb211c80319c"
CALLER_SPAN = "b7ad6b7169203331"
SERVER, CLIENT, PRODUCER, CONSUMER = 2, 3, 4, 5  # OTLP span kinds


# The first run on a machine builds the collector: 45-100 s on 2 idle cores, 8.5 minutes measured
# on a loaded machine.
@pytest.mark.timeout(1_500)
def test_the_trace_and_the_metrics_reach_a_collector_over_otlp_http(
    kafka: LocalKafka, tmp_path: Path
) -> None:
    user, movie = uuid.uuid4(), uuid.uuid4()
    with LocalCollector(tmp_path / "otelcol") as collector:
        otel = {
            "OTEL_EXPORTER_OTLP_ENDPOINT": collector.endpoint,
            "OTEL_METRIC_EXPORT_INTERVAL": "500",
            "OTEL_BSP_SCHEDULE_DELAY": "100",
        }
        with local_host(kafka, tmp_path, **otel) as host:
            posted = httpx.post(
                f"{host.base}/v1/views",
                json={"movie_id": str(movie), "movie_time_offset": 7_000},
                headers={**bearer(user), "traceparent": f"00-{CALLER_TRACE}-{CALLER_SPAN}-01"},
            )
            assert posted.status_code == 202, posted.text
            assert posted.headers["traceresponse"].split("-")[1] == CALLER_TRACE

            def inserted() -> list[dict[str, object]]:
                return [
                    s for s in spans(collector.exports("traces")) if s["name"].startswith("INSERT")
                ]

            eventually(inserted, timeout=30, what="the insert span at the collector")
            eventually(
                lambda: "sink.consumer.lag"
                in metric_names(collector.exports("metrics")).get("watch-progress-sink", set()),
                timeout=30,
                what="the sink's metrics at the collector",
            )
        assert host.returncode == 0, host.log.read_text()
        views = host.views_topic
        received = spans(collector.exports("traces"))
        metrics = metric_names(collector.exports("metrics"))

    by_name = {span["name"]: span for span in received if span["traceId"] == CALLER_TRACE}
    server = by_name["POST /v1/views"]
    assert (server["kind"], server["parentSpanId"]) == (SERVER, CALLER_SPAN)
    assert server["service"] == "watch-progress-ingest"
    assert attributes(server)["http.route"] == "/v1/views"
    assert posted.headers["traceresponse"].split("-")[2] == server["spanId"]
    producer = by_name[f"send {views}"]
    assert (producer["kind"], producer["parentSpanId"]) == (PRODUCER, server["spanId"])

    (batch,) = [
        s
        for s in received
        if s["name"] == f"process {views}"
        and any(link["spanId"] == producer["spanId"] for link in s.get("links", []))
    ]
    assert batch["kind"] == CONSUMER and batch["service"] == "watch-progress-sink"
    (insert,) = [
        s
        for s in received
        if s.get("parentSpanId") == batch["spanId"]
        and s["kind"] == CLIENT
        and s["name"].startswith("INSERT")
    ]
    assert attributes(insert)["db.system.name"] == "clickhouse"

    assert {
        "http.server.request.duration",
        "http.server.active_requests",
        "messaging.client.operation.duration",
        "ingest.events.accepted",
        "process.memory.usage",
    } <= metrics["watch-progress-ingest"]
    assert {
        "messaging.client.consumed.messages",
        "db.client.operation.duration",
        "sink.rows.inserted",
        "sink.consumer.lag",
        "process.memory.usage",
    } <= metrics["watch-progress-sink"]
