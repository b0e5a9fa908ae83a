"""The log lines are ECS: every line of the paths an operator reads (requests, 4xx/5xx, sink
batches, retries, dead letters, JWKS failures) fits the ECS types of the index template that
both Elasticsearch and OpenSearch use (k8s/infra/elk/ecs-logs-template.json)."""

from __future__ import annotations

import io
import ipaddress
import json
import logging
import uuid
from collections.abc import Callable, Iterator
from datetime import datetime
from typing import Any

import httpx
import orjson
import pytest
from localkafka import free_port
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.resources import SERVICE_NAME, Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from starlette.exceptions import HTTPException
from support import (
    RunningSink,
    bearer,
    eventually,
    fresh_database,
    ingest_client,
    produce_raw,
    repo_root,
    served_ingest,
    view_record,
)

from clickhouse.store import ViewStore
from functions import telemetry
from functions.auth import JwksKeys
from functions.logs import configure_logging
from functions.settings import Settings
from functions.sink.faults import FaultInjectingWriter
from functions.sink.triggers.cloudevent import CloudEventSink

TEMPLATE = repo_root() / "k8s" / "infra" / "elk" / "ecs-logs-template.json"
MAPPINGS: dict[str, Any] = json.loads(TEMPLATE.read_text())["template"]["mappings"]["properties"]

# The top-level names of the ECS reference (field sets and base fields): a log field of another
# meaning under one of these names collides with ECS's mapping of it.
_ECS_NAMES = """
@timestamp agent as client cloud code_signature container data_stream destination device
dll dns ecs elf email error event faas file geo group hash host http interface labels log
macho message network observer orchestrator organization os package pe process registry
related risk rule server service source span tags threat tls trace transaction url user
user_agent vlan volume vulnerability x509
"""
ECS_TOP_LEVEL = frozenset(_ECS_NAMES.split())


def _fits(field_type: str, value: Any) -> bool:
    if isinstance(value, list):
        return all(_fits(field_type, item) for item in value)
    if field_type in ("keyword", "wildcard", "text"):
        return isinstance(value, str)
    if field_type == "long":
        return isinstance(value, int) and not isinstance(value, bool)
    if field_type == "date":
        return isinstance(value, str) and bool(datetime.fromisoformat(value))
    if field_type == "ip":
        return isinstance(value, str) and bool(ipaddress.ip_address(value))
    raise AssertionError(f"no check for the ECS type {field_type}")


def _leaves(
    document: dict[str, Any], prefix: tuple[str, ...] = ()
) -> Iterator[tuple[tuple[str, ...], Any]]:
    for key, value in document.items():
        path = (*prefix, *key.split("."))  # a dotted key is an object path, as in Elasticsearch
        if isinstance(value, dict):
            yield from _leaves(value, path)
        else:
            yield path, value


def ecs_violations(document: dict[str, Any]) -> list[str]:
    """What in one log line Elasticsearch would reject or map against ECS."""
    found = []
    for path, value in _leaves(document):
        name = ".".join(path)
        properties: dict[str, Any] | None = MAPPINGS
        mapping: dict[str, Any] | None = None
        for depth, part in enumerate(path):
            if properties is None:  # the mapping ended in a leaf above this part
                found.append(f"{name}: {'.'.join(path[:depth])} is an ECS value, not an object")
                break
            mapping = properties.get(part)
            if mapping is None:
                if depth > 0 and path[0] != "labels":
                    found.append(f"{name}: not an ECS field of {'.'.join(path[:depth])}")
                elif depth == 0 and part in ECS_TOP_LEVEL:
                    found.append(f"{name}: reuses the ECS name {part} for something else")
                break
            properties = mapping.get("properties")
        else:
            assert mapping is not None
            if "properties" in mapping:
                found.append(f"{name}: ECS maps an object here, the line has {value!r}")
            elif not _fits(mapping["type"], value):
                found.append(f"{name}: {value!r} is not an ECS {mapping['type']}")
    return found


def test_the_checker_catches_the_collisions_that_elasticsearch_rejects() -> None:
    assert ecs_violations({"error": "boom"}) == [
        "error: ECS maps an object here, the line has 'boom'"
    ]
    assert ecs_violations({"url": "http://x"})
    assert ecs_violations({"http.response.status_code": "200"})
    assert ecs_violations({"error": {"kind": "x"}})
    assert ecs_violations({"service.name.first": "x"})
    assert not ecs_violations({"log.level": "info", "error": {"type": "E"}, "records": 3})


@pytest.fixture
def ecs_lines(settings: Settings) -> Iterator[Callable[[], list[dict[str, Any]]]]:
    """The logging of a process that hosts both functions as configure_logging sets it (access
    log on, DEBUG), its stdout stream kept in memory; the lines written so far, parsed, each
    checked against ECS."""
    root = logging.getLogger()
    saved = root.handlers[:], root.level
    access = logging.getLogger("uvicorn.access")
    configure_logging(
        settings.model_copy(update={"log_access": True, "log_level": "DEBUG"}),
        telemetry.service_name("local"),
    )
    stdout = io.StringIO()
    handler = root.handlers[0]
    assert isinstance(handler, logging.StreamHandler)
    handler.setStream(stdout)
    lines: list[dict[str, Any]] = []

    def read() -> list[dict[str, Any]]:
        written, _ = stdout.getvalue(), stdout.truncate(0)
        stdout.seek(0)
        for line in written.splitlines():
            document = orjson.loads(line)
            assert not ecs_violations(document), (ecs_violations(document), line)
            lines.append(document)
        return lines

    try:
        yield read
    finally:
        root.handlers[:], level = saved
        root.setLevel(level)
        access.propagate = False


@pytest.fixture
def traced() -> Iterator[InMemorySpanExporter]:
    """Both functions' own telemetry on, each under its service name, as OTEL_* would turn it
    on; their spans kept in memory."""
    spans = InMemorySpanExporter()
    providers: list[TracerProvider | MeterProvider] = []
    for function in ("ingest", "sink"):
        tracer_provider = TracerProvider(
            resource=Resource.create({SERVICE_NAME: telemetry.service_name(function)})
        )
        tracer_provider.add_span_processor(SimpleSpanProcessor(spans))
        meter_provider = MeterProvider()
        telemetry.use_providers(function, tracer_provider, meter_provider)
        providers += [tracer_provider, meter_provider]
    try:
        yield spans
    finally:
        telemetry.reset()
        for provider in providers:
            provider.shutdown()


@pytest.mark.usefixtures("traced")
def test_one_access_line_per_request_with_its_trace_id(
    settings: Settings, store: ViewStore, ecs_lines: Callable[[], list[dict[str, Any]]]
) -> None:
    # The server writes the access line once the answer is sent, after the SERVER span ended.
    user = uuid.uuid4()
    requests = [
        ("POST", "/v1/views", {"movie_id": str(uuid.uuid4()), "movie_time_offset": 5}, 202),
        ("POST", "/v1/views", {"movie_time_offset": "5"}, 422),
        ("GET", f"/v1/views/{uuid.uuid4()}/position", None, 404),
    ]
    sent: dict[str, int] = {}
    with served_ingest(settings, store) as base:
        for method, path, body, status in requests:
            trace_id = uuid.uuid4().hex
            headers = {**bearer(user), "traceparent": f"00-{trace_id}-{uuid.uuid4().hex[:16]}-01"}
            answer = httpx.request(method, base + path, json=body, headers=headers)
            assert answer.status_code == status, answer.text
            sent[trace_id] = status
        answer = httpx.post(base + "/v1/views", json={}, headers={"traceparent": "broken"})
        assert answer.status_code == 401
    access = [line for line in ecs_lines() if line["log"]["logger"] == "uvicorn.access"]
    assert len(access) == len(requests) + 1
    by_trace = {line["trace"]["id"]: line for line in access}  # every request is traced
    continued = {t: by_trace[t]["http"]["response"]["status_code"] for t in sent}
    assert continued == sent
    # Without a valid traceparent the request started a trace of its own.
    (started,) = [line for trace_id, line in by_trace.items() if trace_id not in sent]
    assert started["http"]["response"]["status_code"] == 401
    assert all(line["ecs.version"] for line in access)
    # Named as their traces are, in a process that hosts both functions too; lines outside any
    # span by the process.
    assert {line["service"]["name"] for line in access} == {"watch-progress-ingest"}
    logging.getLogger("functions.local").info("outside any request")
    assert ecs_lines()[-1]["service"]["name"] == "watch-progress-local"


def test_a_committed_batch_line_carries_its_batch_trace(
    settings: Settings,
    store: ViewStore,
    ecs_lines: Callable[[], list[dict[str, Any]]],
    traced: InMemorySpanExporter,
) -> None:
    # From the batch span in a trace view to the batch's line in the logs, and back.
    database = fresh_database(store)
    own = settings.model_copy(update={"clickhouse_database": database.database})
    event = view_record(
        uuid.uuid4(), uuid.uuid4(), 1, datetime.fromisoformat("2026-01-01T00:00:00+00:00")
    )
    produce_raw(own, [event.to_kafka()])
    with RunningSink(own, database) as sink:
        eventually(lambda: sink.consumer.batches_committed >= 1, what="a committed batch")
    (line,) = [line for line in ecs_lines() if line["message"] == "batch committed"]
    (batch,) = [span for span in traced.get_finished_spans() if span.name.startswith("process ")]
    assert batch.context is not None
    assert line["trace"]["id"] == f"{batch.context.trace_id:032x}"
    assert line["span"]["id"] == f"{batch.context.span_id:016x}"
    assert line["service"]["name"] == "watch-progress-sink"
    assert line["log"]["origin"]["file"]["name"] == "consumer.py"


class _BrokenStore:
    def __getattr__(self, name: str) -> Any:
        raise RuntimeError(f"the store broke ({name})")


def test_error_lines_carry_ecs_error_fields(
    settings: Settings, store: ViewStore, ecs_lines: Callable[[], list[dict[str, Any]]]
) -> None:
    user = uuid.uuid4()
    nowhere = settings.model_copy(
        update={
            "kafka_bootstrap_servers": f"127.0.0.1:{free_port()}",
            "kafka_delivery_timeout_ms": 500,
        }
    )
    with ingest_client(nowhere, store) as client:
        posted = client.post(
            "/v1/views",
            json={"movie_id": str(uuid.uuid4()), "movie_time_offset": 1},
            headers=bearer(user),
        )
        assert posted.status_code == 503
    with ingest_client(settings, _BrokenStore()) as client:  # type: ignore[arg-type]
        read = client.get(f"/v1/views/{uuid.uuid4()}/position", headers=bearer(user))
        assert read.status_code == 500
    secret_url = f"http://someone:pa55word@127.0.0.1:{free_port()}/jwks?key=s3cret"
    JwksKeys(secret_url, "RS256", 300, 30, 0.5).refresh()

    lines = ecs_lines()
    unhandled = next(line for line in lines if line["message"].startswith("unhandled error"))
    assert unhandled["log.level"] == "error"
    assert unhandled["error"]["type"] == "RuntimeError"
    assert "the store broke" in unhandled["error"]["message"]
    assert unhandled["error"]["stack_trace"]
    assert any(line["message"].startswith("kafka did not acknowledge") for line in lines)
    jwks = next(line for line in lines if line["message"] == "JWKS fetch failed")
    assert jwks["url"] == {
        "scheme": "http",
        "domain": "127.0.0.1",
        "port": jwks["url"]["port"],
        "path": "/jwks",
    }
    assert jwks["error"]["type"]
    logged = json.dumps(lines)
    assert "pa55word" not in logged and "s3cret" not in logged


def test_sink_lines_one_per_batch_and_retries_as_ecs_errors(
    settings: Settings, store: ViewStore, ecs_lines: Callable[[], list[dict[str, Any]]]
) -> None:
    database = fresh_database(store)
    writer = FaultInjectingWriter(database, fault_point=None)
    writer.refuse_inserts(True)
    own = settings.model_copy(
        update={
            "clickhouse_database": database.database,
            "sink_retry_initial_ms": 50,
            "sink_retry_max_ms": 100,
        }
    )
    event = view_record(
        uuid.uuid4(), uuid.uuid4(), 1, datetime.fromisoformat("2026-01-01T00:00:00+00:00")
    )
    produce_raw(own, [event.to_kafka(), (b"k", b"not json")])

    def messages() -> list[str]:
        return [line["message"] for line in ecs_lines()]

    with RunningSink(own, writer) as sink:
        eventually(lambda: "batch not stored, redelivering after back-off" in messages())
        writer.refuse_inserts(False)
        eventually(lambda: sink.consumer.batches_committed >= 1, what="a committed batch")
    lines = ecs_lines()
    refused = next(line for line in lines if line["message"].startswith("batch not stored"))
    assert refused["log.level"] == "warning"
    assert refused["error"]["type"] and refused["error"]["message"]
    committed = [line for line in lines if line["message"] == "batch committed"]
    assert len(committed) == sink.consumer.batches_committed
    assert sum(line["dead_lettered"] for line in committed) == 1

    cloud_event = CloudEventSink(own, lambda: database)
    with pytest.raises(HTTPException):
        cloud_event.handle({"id": "partition:0/offset:9", "source": f"x#{own.views_topic}"}, b"{")
    assert any(line["message"] == "poison record rejected" for line in ecs_lines())
