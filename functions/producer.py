"""An asyncio face on the confluent-kafka producer: ``await send(...)`` returns once acked.

librdkafka does the batching and retries in its own threads. Its delivery reports are served on
the event loop itself: while any send awaits its report, a task polls the producer every
millisecond without blocking, and each report settles its future directly. (A poll thread would
hand every report across threads, one wake-up of the loop and one GIL hand-over per record:
under load that cost more CPU than the rest of the Kafka path.)
"""

from __future__ import annotations

import asyncio
from functools import partial
from typing import Any
from uuid import UUID

from confluent_kafka import KafkaError, KafkaException, Message, Producer

from functions import telemetry
from functions.errors import DeliveryFailed
from functions.kafka_config import producer_config
from functions.settings import Settings
from functions.telemetry import IngestTelemetry, KafkaHeaders

__all__ = ["AsyncProducer"]

# Slack over delivery.timeout.ms for the event loop's own guard: librdkafka reports the timeout
# itself, so this only fires if a delivery report were lost.
_GUARD_SLACK_SECONDS = 1.0
# How often reports are collected while sends are waiting: acks of a broker on the same host
# take about a millisecond, so a shorter wait would only spin.
_POLL_INTERVAL_SECONDS = 0.001


class AsyncProducer:
    """Produces records and awaits their delivery reports without blocking the event loop."""

    def __init__(
        self,
        config: dict[str, Any],
        delivery_timeout_ms: int,
        telemetry: IngestTelemetry | None = None,
    ) -> None:
        self._producer = Producer(config)
        self._telemetry = telemetry
        self._guard_seconds = delivery_timeout_ms / 1000 + _GUARD_SLACK_SECONDS
        self._waiting = 0
        self._reporter: asyncio.Task[None] | None = None

    @classmethod
    def from_settings(cls, settings: Settings) -> AsyncProducer:
        return cls(
            producer_config(settings), settings.kafka_delivery_timeout_ms, telemetry.ingest()
        )

    async def _serve_delivery_reports(self) -> None:
        while self._waiting:
            self._producer.poll(0)
            await asyncio.sleep(_POLL_INTERVAL_SECONDS)

    async def send(
        self, topic: str, key: bytes, value: bytes, message_id: UUID | None = None
    ) -> None:
        """Produce one record; return when the broker acknowledged it, else ``DeliveryFailed``.

        Traced, the record's headers carry the context of its PRODUCER span (W3C
        ``traceparent``), which ends with the acknowledged partition and offset."""
        if self._telemetry is None:
            await self._deliver(topic, key, value, None)
            return
        # Stringified only when traced: ~0.5 us a record that an untraced send does not need.
        message_name = None if message_id is None else str(message_id)
        with self._telemetry.sending(topic, message_name) as send:
            message = await self._deliver(topic, key, value, send.headers)
            send.acknowledged(message.partition(), message.offset())

    async def _deliver(
        self, topic: str, key: bytes, value: bytes, headers: KafkaHeaders | None
    ) -> Message:
        loop = asyncio.get_running_loop()
        delivered: asyncio.Future[Message] = loop.create_future()
        try:
            self._producer.produce(
                topic,
                value=value,
                key=key,
                headers=headers,
                on_delivery=partial(_resolve, delivered),
            )
        except BufferError as exc:
            raise DeliveryFailed("the producer's queue is full") from exc
        except KafkaException as exc:
            raise DeliveryFailed(f"produce failed: {exc}") from exc
        self._waiting += 1
        if self._reporter is None or self._reporter.done():
            self._reporter = asyncio.create_task(self._serve_delivery_reports())
        # A timer that fails the future, not asyncio.wait_for: that wraps every send in a second
        # future and callback, a measurable share of a request that does little else.
        guard = loop.call_later(self._guard_seconds, _expire, delivered)
        try:
            return await delivered
        finally:
            guard.cancel()
            self._waiting -= 1

    def has_live_metadata(self, topic: str, timeout_seconds: float) -> bool:
        """Whether a broker answered a metadata request for ``topic`` just now, with a leader
        for each of its partitions (blocking: call it off the event loop)."""
        found = self._producer.list_topics(topic, timeout=timeout_seconds).topics.get(topic)
        return (
            found is not None
            and found.error is None
            and bool(found.partitions)
            and all(partition.leader >= 0 for partition in found.partitions.values())
        )

    def close(self, timeout_seconds: float = 10.0) -> int:
        """Wait for outstanding deliveries; returns the number of records left unsent."""
        remaining: int = self._producer.flush(timeout_seconds)
        return remaining


def _expire(delivered: asyncio.Future[Message]) -> None:
    if not delivered.done():
        delivered.set_exception(DeliveryFailed("no delivery report in time"))


def _resolve(delivered: asyncio.Future[Message], err: KafkaError | None, msg: Message) -> None:
    if delivered.done() or delivered.get_loop().is_closed():  # the guard or shutdown came first
        return
    if err is None:
        delivered.set_result(msg)
    else:
        delivered.set_exception(DeliveryFailed(f"not acknowledged: {err.str()}"))
