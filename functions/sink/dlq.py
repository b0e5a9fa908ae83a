"""The dead-letter topic: poison records with the reason and their origin in headers."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from confluent_kafka import KafkaException, Message, Producer

from functions.error_reports import report_dead_letter
from functions.kafka_config import dead_letter_producer_config
from functions.settings import Settings
from functions.sink.core import Rejected

__all__ = [
    "DETAIL_HEADER",
    "ORIGIN_HEADERS",
    "REASON_HEADER",
    "DeadLetterPublisher",
    "rejected_fields",
    "report_rejected",
]

REASON_HEADER = "dlq.reason"
DETAIL_HEADER = "dlq.detail"
ORIGIN_HEADERS = ("dlq.origin.topic", "dlq.origin.partition", "dlq.origin.offset")


class DeadLetterPublisher:
    """Produces poison records to the dead-letter topic with the reason and their origin."""

    def __init__(self, settings: Settings) -> None:
        self._topic = settings.dlq_topic
        self._timeout_seconds = settings.kafka_delivery_timeout_ms / 1000
        self._producer = Producer(dead_letter_producer_config(settings))

    def publish(
        self,
        rejected: Sequence[Rejected],
        trace_headers: Sequence[tuple[str, str | bytes | None]] = (),
    ) -> None:
        """Return once every record is acknowledged; raise ``KafkaException`` otherwise.
        ``trace_headers`` (the dead-letter span's context) go on every record."""
        failures: list[str] = []

        def on_delivery(err: Any, _msg: Message) -> None:
            if err is not None:
                failures.append(str(err))

        for item in rejected:
            origin = item.record
            self._producer.produce(
                self._topic,
                value=origin.value,
                key=origin.key,
                headers=[
                    (REASON_HEADER, item.reason.value.encode()),
                    (DETAIL_HEADER, item.detail.encode()),
                    *zip(
                        ORIGIN_HEADERS,
                        (str(part).encode() for part in origin[:3]),  # topic, partition, offset
                        strict=True,
                    ),
                    *trace_headers,
                ],
                on_delivery=on_delivery,
            )
        unsent = self._producer.flush(self._timeout_seconds)
        if unsent or failures:
            raise KafkaException(
                f"dead-letter topic did not acknowledge {unsent + len(failures)} records"
                f" ({'; '.join(failures[:3])})"
            )
        for item in rejected:
            report_rejected(item, self._topic)


def report_rejected(item: Rejected, dead_letter_topic: str) -> None:
    """Report a record on its way to the dead-letter topic as an error report."""
    origin = item.record
    report_dead_letter(
        origin.topic,
        origin.partition,
        origin.offset,
        item.reason.value,
        item.detail,
        dead_letter_topic,
    )


def rejected_fields(item: Rejected) -> dict[str, Any]:
    """A poison record's reason and origin, as the fields of its log line."""
    origin = item.record
    return {
        "reason": item.reason.value,
        "topic": origin.topic,
        "partition": origin.partition,
        "offset": origin.offset,
    }
