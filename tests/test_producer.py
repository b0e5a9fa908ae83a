"""The asyncio face of the Kafka producer: its own guard when librdkafka never reports."""

from __future__ import annotations

import asyncio
import time

import pytest
from localkafka import free_port

from functions.errors import DeliveryFailed
from functions.producer import AsyncProducer, producer_config
from functions.settings import Settings


def test_send_fails_on_its_own_guard_when_no_delivery_report_comes(settings: Settings) -> None:
    # librdkafka would report after a minute; the guard is set for a 0.2 s delivery timeout.
    nowhere = settings.model_copy(update={"kafka_bootstrap_servers": f"127.0.0.1:{free_port()}"})
    config = producer_config(nowhere) | {"delivery.timeout.ms": 60_000}
    producer = AsyncProducer(config, delivery_timeout_ms=200)

    async def send_twice() -> None:
        for _ in range(2):  # the second send finds no stale state from the first
            started = time.monotonic()
            with pytest.raises(DeliveryFailed, match="no delivery report in time"):
                await producer.send(nowhere.views_topic, b"key", b"{}")
            assert 1.0 <= time.monotonic() - started < 5

    try:
        asyncio.run(send_twice())
    finally:
        producer.close(timeout_seconds=0)
