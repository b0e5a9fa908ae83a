"""The Knative trigger: one KafkaSource CloudEvent per call, answered so that KafkaSource does
the right thing with it.

2xx: stored (KafkaSource commits). 4xx: poison, never retried (KafkaSource sends it to the
dead-letter sink). 5xx: ClickHouse failed (KafkaSource retries with back-off). Each answer other
than 2xx carries a problem document.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Callable, Mapping
from typing import Any

import orjson
from cloudevents.exceptions import GenericException as CloudEventError
from cloudevents.http import from_http
from cloudevents.http.event import CloudEvent
from starlette.exceptions import HTTPException

from functions.errors import StoreUnavailable
from functions.problems import PROBLEM_CONTENT_TYPE, problem_body
from functions.settings import Settings
from functions.sink.batch import Batch, SourceRecord
from functions.sink.core import ViewsWriter, store_batch
from functions.sink.dlq import report_rejected

__all__ = ["CloudEventSink", "source_record"]

log = logging.getLogger(__name__)

# KafkaSource: id "partition:<p>/offset:<o>", source ".../kafkasources/<name>#<topic>".
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

    def handle_request(self, headers: Mapping[str, str], body: bytes) -> None:
        """Store the record of a CloudEvent in HTTP form (binary or structured mode)."""
        try:
            event = from_http(headers, body)
        except CloudEventError as exc:
            raise _problem(400, f"not a CloudEvent: {exc}") from exc
        self.handle_event(event)

    def handle_event(self, event: CloudEvent) -> None:
        """Store the event's record; raise an ``HTTPException`` with a problem otherwise."""
        self.handle(dict(event.get_attributes()), event.get_data())

    def handle(self, attributes: dict[str, Any], data: Any) -> None:
        try:
            record = source_record(attributes, data)
        except NotAKafkaSourceEvent as exc:
            raise _problem(400, str(exc)) from exc
        try:
            result = store_batch(
                Batch([record]), self._writer_factory(), self._settings.sink_max_record_bytes
            )
        except StoreUnavailable as exc:
            log.warning("insert failed, KafkaSource will retry: %s", exc)
            raise _problem(503, "the view store is unavailable") from exc
        if result.rejected:
            rejected = result.rejected[0]
            report_rejected(rejected, self._settings.dlq_topic)  # KafkaSource dead-letters it
            log.info(
                "poison record rejected",
                extra={
                    "reason": rejected.reason.value,
                    "topic": record.topic,
                    "partition": record.partition,
                    "offset": record.offset,
                },
            )
            raise _problem(
                422, rejected.detail, reason=rejected.reason.value, id=attributes.get("id")
            )
