"""An asyncio face on the confluent-kafka producer: ``await send(...)`` returns once acked.

librdkafka does the batching and retries in its own threads; a poll thread runs the delivery
callbacks, which hand each outcome to the event loop that is waiting for it. The event loop never
blocks on Kafka, so one worker serves thousands of requests that are each waiting for an ack.
"""

from __future__ import annotations

import asyncio
import threading
from typing import Any

from confluent_kafka import KafkaError, KafkaException, Message, Producer

from functions.errors import DeliveryFailed
from functions.settings import Settings

__all__ = ["AsyncProducer", "producer_config"]

# Slack over delivery.timeout.ms for the event loop's own guard: librdkafka reports the timeout
# itself, so this only fires if a delivery report were lost.
_GUARD_SLACK_SECONDS = 1.0


def producer_config(settings: Settings) -> dict[str, Any]:
    """Producer settings of the HTTP contract: nothing is acknowledged that might be lost."""
    return {
        "bootstrap.servers": settings.kafka_bootstrap_servers,
        "enable.idempotence": True,  # retries inside librdkafka cannot duplicate or reorder
        "acks": "all",
        "delivery.timeout.ms": settings.kafka_delivery_timeout_ms,
        "request.timeout.ms": min(30_000, settings.kafka_delivery_timeout_ms),
        "linger.ms": settings.kafka_linger_ms,
        "compression.type": "lz4",
        "client.id": "watch-progress-ingest",
    }


class AsyncProducer:
    """Produces records and awaits their delivery reports without blocking the event loop."""

    def __init__(self, config: dict[str, Any], delivery_timeout_ms: int) -> None:
        self._producer = Producer(config)
        self._guard_seconds = delivery_timeout_ms / 1000 + _GUARD_SLACK_SECONDS
        self._closing = threading.Event()
        self._poller = threading.Thread(
            target=self._serve_delivery_reports, name="kafka-delivery-reports", daemon=True
        )
        self._poller.start()

    @classmethod
    def from_settings(cls, settings: Settings) -> AsyncProducer:
        return cls(producer_config(settings), settings.kafka_delivery_timeout_ms)

    def _serve_delivery_reports(self) -> None:
        while not self._closing.is_set():
            self._producer.poll(0.1)

    async def send(self, topic: str, key: bytes, value: bytes) -> None:
        """Produce one record; return when the broker acknowledged it, else ``DeliveryFailed``."""
        loop = asyncio.get_running_loop()
        delivered: asyncio.Future[None] = loop.create_future()

        def settle(err: KafkaError | None, _msg: Message) -> None:
            loop.call_soon_threadsafe(_resolve, delivered, err)

        try:
            self._producer.produce(topic, value=value, key=key, on_delivery=settle)
        except BufferError as exc:
            raise DeliveryFailed("the producer's queue is full") from exc
        except KafkaException as exc:
            raise DeliveryFailed(f"produce failed: {exc}") from exc
        try:
            await asyncio.wait_for(delivered, self._guard_seconds)
        except TimeoutError as exc:
            raise DeliveryFailed("no delivery report in time") from exc

    def close(self, timeout_seconds: float = 10.0) -> int:
        """Wait for outstanding deliveries, stop the poll thread; returns records left unsent."""
        remaining: int = self._producer.flush(timeout_seconds)
        self._closing.set()
        self._poller.join()
        return remaining


def _resolve(delivered: asyncio.Future[None], err: KafkaError | None) -> None:
    if delivered.done():  # the guard timed out first
        return
    if err is None:
        delivered.set_result(None)
    else:
        delivered.set_exception(DeliveryFailed(f"not acknowledged: {err.str()}"))
