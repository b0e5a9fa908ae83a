"""Kafka helpers of the bench: count a topic's records, pre-fill a topic fast."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence

from confluent_kafka import Consumer, Producer, TopicPartition

__all__ = ["fill_topic", "topic_size"]


def topic_size(bootstrap: str, topic: str) -> int:
    """Records ever appended to ``topic``: the sum of its partitions' high watermarks."""
    consumer = Consumer({"bootstrap.servers": bootstrap, "group.id": "bench-watermarks"})
    try:
        partitions = consumer.list_topics(topic, timeout=10).topics[topic].partitions
        return sum(
            consumer.get_watermark_offsets(TopicPartition(topic, p), timeout=10)[1]
            for p in partitions
        )
    finally:
        consumer.close()


def fill_topic(
    bootstrap: str,
    topic: str,
    records: Iterable[tuple[bytes, bytes]],
    progress: Callable[[int], None],
    headers: Sequence[list[tuple[str, bytes]]] = (),
) -> int:
    """Produce (key, value) records as fast as the broker takes them, with ``headers`` in turn
    if given; returns the count."""
    producer = Producer(
        {
            "bootstrap.servers": bootstrap,
            "acks": "all",
            "linger.ms": 20,
            "batch.size": 1_000_000,
            "compression.type": "lz4",
            "queue.buffering.max.messages": 500_000,
        }
    )
    count = 0
    for key, value in records:
        while True:
            try:
                producer.produce(
                    topic,
                    value=value,
                    key=key,
                    headers=headers[count % len(headers)] if headers else None,
                )
                break
            except BufferError:
                producer.poll(0.05)
        count += 1
        if count % 100_000 == 0:
            producer.poll(0)
            progress(count)
    unsent = producer.flush(60)
    if unsent:
        raise RuntimeError(f"{unsent} records not acknowledged while filling {topic}")
    progress(count)
    return count
