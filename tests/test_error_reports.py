"""Error reports: what reaches Sentry, grouped and bounded, without secrets. The SDK's own
transport posts to a small HTTP endpoint started here; the tests read the envelopes it got."""

from __future__ import annotations

import gzip
import logging
import threading
import uuid
from collections.abc import Callable, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest
import sentry_sdk
from localkafka import free_port
from opentelemetry import trace
from opentelemetry.trace import NonRecordingSpan, SpanContext, TraceFlags
from sentry_sdk.envelope import Envelope
from starlette.testclient import TestClient
from support import RunningSink, bearer, eventually, produce_raw

from clickhouse.store import ViewStore
from functions import error_reports
from functions.error_reports import EVENTS_PER_GROUP_PER_MINUTE, GroupLimit, scrub
from functions.http.app import IngestApi
from functions.producer import AsyncProducer
from functions.settings import Settings


class SentryEndpoint:
    """Receives envelopes as Sentry's ingest does (``POST /api/<project>/envelope/``)."""

    def __init__(self) -> None:
        self.envelopes: list[Envelope] = []
        self.raw: list[bytes] = []
        received = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers["Content-Length"]))
                if self.headers.get("Content-Encoding") == "gzip":
                    body = gzip.decompress(body)
                received.raw.append(body)
                received.envelopes.append(Envelope.deserialize(body))
                self.send_response(200)
                self.end_headers()

            def log_message(self, *_args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", free_port()), Handler)
        self.dsn = f"http://public@127.0.0.1:{self.server.server_port}/1"

    def events(self) -> list[dict[str, Any]]:
        sentry_sdk.flush(timeout=10)
        return [
            item.payload.json
            for envelope in self.envelopes
            for item in envelope.items
            if item.type == "event" and item.payload.json is not None
        ]


@pytest.fixture
def sentry(settings: Settings) -> Iterator[tuple[SentryEndpoint, Settings]]:
    endpoint = SentryEndpoint()
    thread = threading.Thread(target=endpoint.server.serve_forever, daemon=True)
    thread.start()
    reporting = settings.model_copy(
        update={"sentry_dsn": endpoint.dsn, "sentry_environment": "test"}
    )
    error_reports.configure_error_reports(reporting)
    try:
        yield endpoint, reporting
    finally:
        sentry_sdk.get_client().close(timeout=5)
        sentry_sdk.get_global_scope().set_client(None)
        endpoint.server.shutdown()
        endpoint.server.server_close()


def test_nothing_is_set_up_without_a_dsn(settings: Settings) -> None:
    error_reports.configure_error_reports(settings)
    assert not sentry_sdk.get_client().is_active()


def test_the_group_limit_admits_a_bounded_number_and_counts_the_rest() -> None:
    now = [0.0]
    limit = GroupLimit(per_window=2, window_seconds=60, clock=lambda: now[0])
    assert [limit.admit("a") for _ in range(5)] == [0, 0, None, None, None]
    assert limit.admit("b") == 0
    now[0] = 61
    assert limit.admit("a") == 3  # the next one sent says how many were left out


def test_a_flood_of_dead_letters_is_one_issue_per_reason_and_bounded_envelopes(
    sentry: tuple[SentryEndpoint, Settings],
) -> None:
    endpoint, _settings = sentry
    for offset in range(10_000):
        error_reports.report_dead_letter("views", 3, offset, "invalid_json", "not JSON", "dlq")
    error_reports.report_dead_letter("views", 1, 7, "oversized", "too big", "dlq")
    events = endpoint.events()
    assert len(endpoint.envelopes) <= 2 * EVENTS_PER_GROUP_PER_MINUTE
    invalid = [e for e in events if e["fingerprint"] == ["dead-letter", "invalid_json"]]
    assert len(invalid) == EVENTS_PER_GROUP_PER_MINUTE
    assert "invalid record" in invalid[0]["message"]
    origin = invalid[0]["contexts"]["dead_letter"]
    assert (origin["topic"], origin["partition"], origin["reason"]) == ("views", 3, "invalid_json")
    assert origin["offset"] == 0
    (oversized,) = [e for e in events if e["fingerprint"] == ["dead-letter", "oversized"]]
    assert oversized["contexts"]["dead_letter"]["offset"] == 7
    assert oversized["environment"] == "test"
    assert oversized["release"] == "0.1.0"  # the package version


def test_the_sink_reports_each_dead_lettered_record_with_its_origin(
    sentry: tuple[SentryEndpoint, Settings], store: ViewStore
) -> None:
    endpoint, settings = sentry
    produce_raw(settings, [(b"k", b"{not json"), (b"k", b""), (b"k", b"[1]")], partition=2)
    with RunningSink(settings, store) as sink:
        eventually(lambda: sink.consumer.records_dead_lettered == 3, what="the dead letters")
    reported = {
        (e["contexts"]["dead_letter"]["offset"], e["contexts"]["dead_letter"]["reason"])
        for e in endpoint.events()
        if e.get("fingerprint", [None])[0] == "dead-letter"
    }
    assert reported == {(0, "invalid_json"), (1, "empty"), (2, "schema_violation")}
    for event in endpoint.events():
        if event.get("fingerprint", [None])[0] == "dead-letter":
            assert event["contexts"]["dead_letter"]["topic"] == settings.views_topic
            assert event["contexts"]["dead_letter"]["partition"] == 2


class _FailingProducer:
    async def send(
        self, topic: str, key: bytes, value: bytes, message_id: str | None = None
    ) -> None:
        raise RuntimeError("producer crashed")


def test_a_500_is_reported_without_token_or_body(
    sentry: tuple[SentryEndpoint, Settings], store: ViewStore
) -> None:
    from functions_framework.aio import _create_asgi_app_with_function

    endpoint, settings = sentry
    user = uuid.uuid4()
    headers = bearer(user)
    token = headers["Authorization"].removeprefix("Bearer ")
    failing: Callable[[], AsyncProducer] = lambda: _FailingProducer()  # type: ignore[assignment,return-value]  # noqa: E731
    api = IngestApi(settings, failing, lambda: store)
    app = _create_asgi_app_with_function(api.handle, "http", False)
    with TestClient(app) as client:
        body = f'{{"movie_id": "{uuid.uuid4()}", "movie_time_offset": 1}}'
        answer = client.post(
            "/v1/views", content=body, headers={**headers, "content-type": "application/json"}
        )
        assert answer.status_code == 500
    events = endpoint.events()
    (crash,) = [e for e in events if e.get("level") == "error"]
    assert crash["exception"]["values"][-1]["type"] == "RuntimeError"
    assert crash["logger"] == "functions.http.app"
    everything = b"".join(endpoint.raw).decode()
    assert token not in everything and token.split(".")[2] not in everything
    assert body not in everything and "movie_time_offset" not in everything
    assert "vars" not in str(crash["exception"])  # no local variables of any frame


def test_warnings_are_reported_with_the_trace_id_of_the_current_span(
    sentry: tuple[SentryEndpoint, Settings],
) -> None:
    endpoint, _settings = sentry
    trace_id = uuid.uuid4().int
    context = SpanContext(trace_id, 0x42, is_remote=False, trace_flags=TraceFlags(1))
    with trace.use_span(NonRecordingSpan(context)):
        logging.getLogger("functions.http.app").warning("kafka did not acknowledge: %s", "timeout")
    (event,) = endpoint.events()
    assert event["tags"]["trace_id"] == f"{trace_id:032x}"
    assert event["contexts"]["trace"]["trace_id"] == f"{trace_id:032x}"
    assert event["logentry"]["message"] == "kafka did not acknowledge: %s"


def test_the_scrubber_removes_credentials_and_bodies() -> None:
    token = "eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiJ4In0.c2lnbmF0dXJl"
    event = {
        "request": {
            "headers": {"Authorization": f"Bearer {token}", "Accept": "*/*"},
            "data": '{"movie_id": "x"}',
            "cookies": {"session": "s"},
        },
        "breadcrumbs": {"values": [{"message": f"GET /x with token={token}"}]},
        "extra": {"note": "bearer abc.def"},
    }
    scrubbed = scrub(event)
    assert scrubbed["request"] == {"headers": {"Authorization": "[Filtered]", "Accept": "*/*"}}
    assert token not in str(scrubbed)
    assert scrubbed["extra"]["note"] == "[Filtered]"
