"""The Knative trigger: one KafkaSource CloudEvent per call, answered so that KafkaSource does
the right thing with it.

2xx: stored (KafkaSource commits). 4xx: poison, never retried (KafkaSource sends it to the
dead-letter sink). 5xx: ClickHouse failed (KafkaSource retries with back-off). Each answer other
than 2xx carries a problem document.

Served as an HTTP function, not a functions-framework ``cloud_event`` one: the framework hands a
CloudEvent function the event alone, and the trace context is in the request's headers. The
KafkaSource dispatcher opens a span of its own as a child of the context in the Kafka record's
headers and sends it as the W3C ``traceparent`` header; the record's own headers arrive as
``kafkaheader<name>`` extensions. Traced, the record's CONSUMER span continues the first of: the
``traceparent`` header, a ``traceparent`` extension (CloudEvents distributed tracing), the
record's ``kafkaheadertraceparent``; and it links the record's producer context.
"""

from __future__ import annotations

import asyncio
import logging
import re
from collections.abc import Callable, Mapping
from functools import partial
from typing import Any

import orjson
from cloudevents.exceptions import GenericException
from cloudevents.http import from_http
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import Response

from functions import telemetry
from functions.errors import StoreUnavailable
from functions.problems import PROBLEM_CONTENT_TYPE, problem_body
from functions.settings import Settings
from functions.sink.batch import Batch, SourceRecord
from functions.sink.core import BatchResult, ViewsWriter, store_batch
from functions.sink.dlq import rejected_fields, report_rejected
from functions.telemetry import KafkaHeaders

__all__ = ["CloudEventSink", "source_record"]

log = logging.getLogger(__name__)

# KafkaSource: id "partition:<p>/offset:<o>", source ".../kafkasources/<name>#<topic>".
_KAFKA_HEADER_PREFIX = "kafkaheader"  # a record header <name> is the extension kafkaheader<name>
_KAFKA_SOURCE_ID = re.compile(r"^partition:(\d+)/offset:(\d+)$")


class NotAKafkaSourceEvent(ValueError):
    """The CloudEvent does not carry KafkaSource's partition/offset identity."""


def _data_bytes(data: Any) -> bytes | None:
    # functions-framework hands over JSON-decoded data when it parses, raw bytes when not.
    if data is None or isinstance(data, bytes):
        return data
    if isinstance(data, str):
        return data.encode()
    return orjson.dumps(data)


def source_record(attributes: dict[str, Any], data: Any) -> SourceRecord:
    """The Kafka record a KafkaSource CloudEvent was made from."""
    match = _KAFKA_SOURCE_ID.match(str(attributes.get("id", "")))
    if match is None:
        raise NotAKafkaSourceEvent(
            f"id {attributes.get('id')!r} is not KafkaSource's 'partition:<p>/offset:<o>'"
        )
    source = str(attributes.get("source", ""))
    topic = source.rpartition("#")[2] if "#" in source else source
    key = attributes.get("key") or attributes.get("partitionkey")
    return SourceRecord(
        topic=topic,
        partition=int(match.group(1)),
        offset=int(match.group(2)),
        key=str(key).encode() if key is not None else None,
        value=_data_bytes(data),
    )


def kafka_headers(attributes: dict[str, Any]) -> KafkaHeaders:
    """The record's headers, as KafkaSource forwards them (``kafkaheader<name>`` extensions)."""
    return [
        (name.removeprefix(_KAFKA_HEADER_PREFIX), str(value).encode())
        for name, value in attributes.items()
        if name.startswith(_KAFKA_HEADER_PREFIX)
    ]


def _problem(status: int, detail: str, **extensions: Any) -> HTTPException:
    # Starlette renders HTTPException.detail as the body and keeps our content type.
    return HTTPException(
        status_code=status,
        detail=problem_body(status, detail, **extensions).decode(),
        headers={"Content-Type": PROBLEM_CONTENT_TYPE},
    )


class CloudEventSink:
    """Stores the view event of one CloudEvent, or raises the HTTP answer KafkaSource needs."""

    def __init__(self, settings: Settings, writer_factory: Callable[[], ViewsWriter]) -> None:
        self._settings = settings
        self._writer_factory = writer_factory
        self._telemetry = telemetry.sink()

    async def handle_request(self, request: Request) -> Response:
        """Store the record of the CloudEvent a request carries (binary or structured mode);
        raise an ``HTTPException`` with a problem otherwise."""
        try:
            event = from_http(request.headers, await request.body())
        except GenericException as exc:
            raise _problem(400, f"not a CloudEvent: {exc}") from exc
        # The insert blocks: off the event loop (the thread gets this context).
        await asyncio.to_thread(
            self.handle, dict(event.get_attributes()), event.get_data(), request.headers
        )
        return Response("OK")

    def handle(
        self,
        attributes: dict[str, Any],
        data: Any,
        http_headers: Mapping[str, str] | None = None,
    ) -> None:
        try:
            record = source_record(attributes, data)
        except NotAKafkaSourceEvent as exc:
            raise _problem(400, str(exc)) from exc
        batch = Batch([record])
        store = partial(self._store, batch)
        if self._telemetry is None:
            self._conclude(attributes, store())
            return
        headers = kafka_headers(attributes)
        parent = telemetry.cloud_event_parent(http_headers or {}, attributes, headers)
        self._telemetry.begin_batch(batch, record.topic, 1, [headers], parent=parent)
        try:
            result = self._telemetry.within_batch(batch, store)()
        except BaseException as exc:  # the answer KafkaSource gets, or a crash: the span ends
            self._telemetry.end_batch(batch, exc)
            raise
        self._telemetry.end_batch(batch)
        self._conclude(attributes, result)

    def _store(self, batch: Batch) -> BatchResult:
        try:
            return store_batch(
                batch,
                self._writer_factory(),
                self._settings.sink_max_record_bytes,
                self._telemetry,
            )
        except StoreUnavailable as exc:
            log.warning("insert failed, KafkaSource will retry: %s", exc)
            raise _problem(503, "the view store is unavailable") from exc

    def _conclude(self, attributes: dict[str, Any], result: BatchResult) -> None:
        if result.rejected:
            rejected = result.rejected[0]
            report_rejected(rejected, self._settings.dlq_topic)  # KafkaSource dead-letters it
            log.info("poison record rejected", extra=rejected_fields(rejected))
            raise _problem(
                422, rejected.detail, reason=rejected.reason.value, id=attributes.get("id")
            )
