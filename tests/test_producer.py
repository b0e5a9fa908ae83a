"""The asyncio face of the Kafka producer: its own guard when librdkafka never reports."""

from __future__ import annotations

import asyncio
import uuid

import pytest
from localkafka import LocalKafka

from functions.errors import DeliveryFailed
from functions.kafka_config import producer_config
from functions.producer import AsyncProducer
from functions.settings import Settings


def test_send_fails_on_its_own_guard_when_no_delivery_report_comes(
    kafka: LocalKafka, settings: Settings
) -> None:
    # A topic that does not exist (the broker creates none): librdkafka waits for it and would
    # report after a minute; the guard is set for a 0.2 s delivery timeout.
    config = producer_config(settings) | {"delivery.timeout.ms": 60_000}
    producer = AsyncProducer(config, delivery_timeout_ms=200)
    missing_topic = f"missing-{uuid.uuid4().hex}"

    async def send_twice() -> None:
        for _ in range(2):  # the second send finds no stale state from the first
            # The guard's own failure, not librdkafka's report (that would say "not
            # acknowledged", after a minute).
            with pytest.raises(DeliveryFailed, match="no delivery report in time"):
                await producer.send(missing_topic, b"key", b"{}")

    asyncio.run(send_twice())
    # Failed by the guard, the records are still librdkafka's: they go out once the topic is
    # there (their reports, after the loop closed, settle nothing).
    kafka.create_topics({missing_topic: 1})
    assert producer.close(timeout_seconds=30) == 0
