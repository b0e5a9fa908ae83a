"""The OpenFaaS Pro kafka-connector trigger: one record per HTTP call.

The connector posts the record's value as the body, with ``X-Topic``, ``X-Kafka-Partition``,
``X-Kafka-Offset`` and ``X-Kafka-Key`` (base64 when ``X-Kafka-Key-Enc: b64``). It acknowledges
the record once the call returns *whatever the answer* (synchronous invocation, its default), or
once the call is queued (asynchronous: the queue-worker then retries 5xx answers a bounded
number of times). It has no dead-letter sink of its own, so this adapter answers only once the
record is safe:

- 200 ``stored``: in ClickHouse;
- 200 ``dead_lettered``: poison, written to ``views.dlq`` with its reason (acknowledged);
- 503 problem: ClickHouse or the dead-letter topic failed (retried in asynchronous mode only:
  docs/deployment.md says which trigger to pick when an outage must lose nothing);
- 400 problem: not a kafka-connector call.

``GET /healthz`` and ``GET /readyz`` (OpenFaaS's probes) are answered by ``functions/main.py``:
the process, and whether ClickHouse answers.
"""

from __future__ import annotations

import base64
import binascii
import logging
from collections.abc import Callable, Mapping

import orjson
from confluent_kafka import KafkaException
from starlette.responses import Response

from functions.errors import StoreUnavailable
from functions.logs import error_fields
from functions.problems import problem_response
from functions.settings import Settings
from functions.sink.batch import Batch, SourceRecord
from functions.sink.core import ViewsWriter, store_batch
from functions.sink.dlq import DeadLetterPublisher, rejected_fields

__all__ = ["ConnectorSink", "NotAConnectorCall", "connector_record"]

log = logging.getLogger(__name__)


class NotAConnectorCall(ValueError):
    """The request lacks the kafka-connector's topic, partition or offset headers."""


def connector_record(headers: Mapping[str, str], body: bytes) -> SourceRecord:
    """The Kafka record a kafka-connector call was made from (``headers`` case-insensitive)."""
    topic = headers.get("x-topic")
    partition = headers.get("x-kafka-partition", "")
    offset = headers.get("x-kafka-offset", "")
    if not topic or not partition.isdigit() or not offset.isdigit():
        raise NotAConnectorCall(
            "expected the kafka-connector's X-Topic, X-Kafka-Partition and X-Kafka-Offset headers"
        )
    key = headers.get("x-kafka-key")
    encoded_key = key.encode() if key is not None else None
    if encoded_key is not None and headers.get("x-kafka-key-enc") == "b64":
        try:
            encoded_key = base64.b64decode(encoded_key, validate=True)
        except binascii.Error as exc:
            raise NotAConnectorCall(f"X-Kafka-Key is not base64: {exc}") from exc
    return SourceRecord(
        topic=topic,
        partition=int(partition),
        offset=int(offset),
        key=encoded_key,
        value=body or None,
    )


def _answer(outcome: str) -> Response:
    return Response(orjson.dumps({"status": outcome}), media_type="application/json")


class ConnectorSink:
    """Stores (or dead-letters) the record of one kafka-connector call; blocking, so call it on
    a worker thread."""

    def __init__(
        self,
        settings: Settings,
        writer_factory: Callable[[], ViewsWriter],
        dead_letters: DeadLetterPublisher,
    ) -> None:
        self._max_record_bytes = settings.sink_max_record_bytes
        self._writer_factory = writer_factory
        self._dead_letters = dead_letters

    def handle(self, headers: Mapping[str, str], body: bytes) -> Response:
        try:
            record = connector_record(headers, body)
        except NotAConnectorCall as exc:
            return problem_response(400, str(exc))
        try:
            result = store_batch(Batch([record]), self._writer_factory(), self._max_record_bytes)
            if result.rejected:
                self._dead_letters.publish(result.rejected)
        except (StoreUnavailable, KafkaException) as exc:
            log.warning(
                "record not stored, answering 503",
                extra={"partition": record.partition, "offset": record.offset, **error_fields(exc)},
            )
            return problem_response(503, "the view store or the dead-letter topic is unavailable")
        if result.rejected:
            log.info("poison record dead-lettered", extra=rejected_fields(result.rejected[0]))
            return _answer("dead_lettered")
        return _answer("stored")
