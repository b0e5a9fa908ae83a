"""Over the wire: `python -m functions.local` exports one connected trace and the metrics over
OTLP/HTTP to a real OpenTelemetry Collector (built once into .local/otelcol/)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import uuid
from pathlib import Path

import httpx
from localkafka import LocalKafka, free_port
from localotelcol import LocalCollector, attributes, metric_names, spans
from support import JWT_SECRET, bearer, eventually, repo_root

CALLER_TRACE = "0af7651916cd43dd8448eb211c80319c"
CALLER_SPAN = "b7ad6b7169203331"
SERVER, CLIENT, PRODUCER, CONSUMER = 2, 3, 4, 5  # OTLP span kinds


def test_the_trace_and_the_metrics_reach_a_collector_over_otlp_http(
    kafka: LocalKafka, tmp_path: Path
) -> None:
    suffix = uuid.uuid4().hex[:8]
    views, dlq = f"views-{suffix}", f"views-dlq-{suffix}"
    kafka.create_topics({views: 6, dlq: 1})
    port = free_port()
    with LocalCollector(tmp_path / "otelcol") as collector:
        env = {
            **{k: v for k, v in os.environ.items() if not k.startswith("OTEL_")},
            "KAFKA_BOOTSTRAP_SERVERS": kafka.bootstrap_servers,
            "VIEWS_TOPIC": views,
            "DLQ_TOPIC": dlq,
            "SINK_GROUP_ID": f"sink-{suffix}",
            "SINK_BATCH_MAX_WAIT_MS": "100",
            "KAFKA_SESSION_TIMEOUT_MS": "6000",
            "CLICKHOUSE_DSN": f"chdb://{tmp_path / 'clickhouse'}",
            "JWT_SECRET": JWT_SECRET,
            "PORT": str(port),
            "OTEL_EXPORTER_OTLP_ENDPOINT": collector.endpoint,
            "OTEL_METRIC_EXPORT_INTERVAL": "500",
            "OTEL_BSP_SCHEDULE_DELAY": "100",
        }
        log_path = tmp_path / "local.log"
        with log_path.open("wb") as log:
            host = subprocess.Popen(
                [sys.executable, "-m", "functions.local"],
                cwd=repo_root(),
                env=env,
                stdout=log,
                stderr=subprocess.STDOUT,
            )
        base = f"http://127.0.0.1:{port}"
        user, movie = uuid.uuid4(), uuid.uuid4()
        try:

            def healthy() -> bool:
                try:
                    return httpx.get(f"{base}/healthz").status_code == 200
                except httpx.TransportError:
                    assert host.poll() is None, log_path.read_text()
                    return False

            eventually(healthy, timeout=60, what="GET /healthz")
            posted = httpx.post(
                f"{base}/v1/views",
                json={"movie_id": str(movie), "movie_time_offset": 7_000},
                headers={**bearer(user), "traceparent": f"00-{CALLER_TRACE}-{CALLER_SPAN}-01"},
            )
            assert posted.status_code == 202, posted.text
            assert posted.headers["traceresponse"].split("-")[1] == CALLER_TRACE

            def position() -> dict[str, object] | None:
                response = httpx.get(f"{base}/v1/views/{movie}/position", headers=bearer(user))
                return response.json() if response.status_code == 200 else None

            eventually(position, timeout=30, what="the row")

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
        finally:
            host.send_signal(signal.SIGINT)
            assert host.wait(timeout=30) == 0, log_path.read_text()

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
