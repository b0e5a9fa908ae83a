"""Every Kafka client's configuration: the ingest producer, the dead-letter producer, the consumer.

Both producers share the guarantee of the pipeline (idempotent, acknowledged by all in-sync
replicas, bounded by ``KAFKA_DELIVERY_TIMEOUT_MS``); the ingest producer adds what its latency
and throughput need.
"""

from __future__ import annotations

from typing import Any

from functions.settings import Settings

__all__ = [
    "MAX_POLL_INTERVAL_MS",
    "consumer_config",
    "dead_letter_producer_config",
    "dead_letter_reader_config",
    "producer_config",
]


def _acknowledged_producer(settings: Settings, client_id: str) -> dict[str, Any]:
    """Nothing counts as sent that might be lost."""
    return {
        "bootstrap.servers": settings.kafka_bootstrap_servers,
        "enable.idempotence": True,  # retries inside librdkafka cannot duplicate or reorder
        "acks": "all",
        "delivery.timeout.ms": settings.kafka_delivery_timeout_ms,
        "client.id": client_id,
    }


def producer_config(settings: Settings) -> dict[str, Any]:
    """The ingest function's producer: the HTTP answer waits for its acknowledgement."""
    return {
        **_acknowledged_producer(settings, "watch-progress-ingest"),
        "request.timeout.ms": min(30_000, settings.kafka_delivery_timeout_ms),
        "linger.ms": settings.kafka_linger_ms,
        "compression.type": "lz4",
    }


def dead_letter_producer_config(settings: Settings) -> dict[str, Any]:
    """The sink's producer of poison records: a batch is committed once they are acknowledged."""
    return _acknowledged_producer(settings, "watch-progress-sink-dlq")


# librdkafka's default, set explicitly: a member that has not polled for this long has left its
# group, and the sink's liveness probe allows a poll loop as long.
MAX_POLL_INTERVAL_MS = 300_000


def consumer_config(settings: Settings) -> dict[str, Any]:
    """The sink's consumer-group member."""
    return {
        "bootstrap.servers": settings.kafka_bootstrap_servers,
        "group.id": settings.sink_group_id,
        "enable.auto.commit": False,  # offsets are committed only after the insert
        "auto.offset.reset": "earliest",
        "partition.assignment.strategy": "cooperative-sticky",
        "session.timeout.ms": settings.kafka_session_timeout_ms,
        "max.poll.interval.ms": MAX_POLL_INTERVAL_MS,
        "client.id": "watch-progress-sink",
        # Larger fetches and a deeper local queue (still capped by queued.max.messages.kbytes,
        # 64 MiB): with the defaults, 1 MiB a partition a fetch, a consumer draining a backlog
        # here waited on the broker at ~190k records/s; with these it read ~340k.
        "max.partition.fetch.bytes": 10 * 2**20,
        "queued.min.messages": 500_000,
    }


def dead_letter_reader_config(settings: Settings, group_id: str) -> dict[str, Any]:
    """The operator's reader of the dead-letter topic (``make dlq``): assigned partitions,
    read from the start, nothing committed."""
    return {
        "bootstrap.servers": settings.kafka_bootstrap_servers,
        "group.id": group_id,
        "enable.auto.commit": False,
        "enable.partition.eof": False,
        "client.id": "watch-progress-dlq-reader",
    }
