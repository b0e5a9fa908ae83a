"""The KEDA-style trigger: a consumer-group loop that feeds the core in bounded batches.

Per batch: insert (core) -> dead-letter the rejected records and wait for their acks -> commit
``last offset + 1`` per partition. Nothing is committed before both writes succeeded, so a crash
anywhere redelivers, and redelivery is deduplicated in ClickHouse. When ClickHouse fails, the
loop seeks back to the batch's first offsets, drops the batch and backs off (capped, doubling);
it keeps polling meanwhile, so it stays in the group and follows rebalances.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from collections.abc import Callable, Sequence
from typing import Any

from confluent_kafka import Consumer, KafkaException, Message, Producer, TopicPartition

from functions.errors import StoreUnavailable
from functions.settings import Settings
from functions.sink.core import BatchResult, Rejected, SourceRecord, ViewsWriter, store_batch

__all__ = ["BatchConsumer", "DeadLetterPublisher", "consumer_config", "resident_set_bytes"]

log = logging.getLogger(__name__)

# confluent-kafka's consume() returns after this long without records, so that a stop request
# or the end of a batch window is noticed promptly.
_POLL_SLICE_SECONDS = 0.1
_PAGE_BYTES = os.sysconf("SC_PAGE_SIZE")


def resident_set_bytes() -> int | None:
    """This process's current RSS (Linux ``/proc``), for the memory-over-time logs."""
    try:
        with open("/proc/self/statm", "rb") as statm:
            return int(statm.read().split()[1]) * _PAGE_BYTES
    except OSError:
        return None


def consumer_config(settings: Settings) -> dict[str, Any]:
    return {
        "bootstrap.servers": settings.kafka_bootstrap_servers,
        "group.id": settings.sink_group_id,
        "enable.auto.commit": False,  # offsets are committed only after the insert
        "auto.offset.reset": "earliest",
        "partition.assignment.strategy": "cooperative-sticky",
        "session.timeout.ms": settings.kafka_session_timeout_ms,
        "client.id": "watch-progress-sink",
    }


class DeadLetterPublisher:
    """Produces poison records to the dead-letter topic with the reason and their origin."""

    def __init__(self, settings: Settings) -> None:
        self._topic = settings.dlq_topic
        self._timeout_seconds = settings.kafka_delivery_timeout_ms / 1000
        self._producer = Producer(
            {
                "bootstrap.servers": settings.kafka_bootstrap_servers,
                "enable.idempotence": True,
                "acks": "all",
                "delivery.timeout.ms": settings.kafka_delivery_timeout_ms,
                "client.id": "watch-progress-sink-dlq",
            }
        )

    def publish(self, rejected: Sequence[Rejected]) -> None:
        """Return once every record is acknowledged; raise ``KafkaException`` otherwise."""
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
                    ("dlq.reason", item.reason.value.encode()),
                    ("dlq.detail", item.detail.encode()),
                    ("dlq.origin.topic", origin.topic.encode()),
                    ("dlq.origin.partition", str(origin.partition).encode()),
                    ("dlq.origin.offset", str(origin.offset).encode()),
                ],
                on_delivery=on_delivery,
            )
        unsent = self._producer.flush(self._timeout_seconds)
        if unsent or failures:
            raise KafkaException(
                f"dead-letter topic did not acknowledge {unsent + len(failures)} records"
                f" ({'; '.join(failures[:3])})"
            )


class BatchConsumer:
    """Consumes views in batches until ``stop`` is set, then commits and leaves the group."""

    def __init__(
        self,
        settings: Settings,
        writer: ViewsWriter,
        consumer_factory: Callable[[dict[str, Any]], Consumer] = Consumer,
    ) -> None:
        self._settings = settings
        self._writer = writer
        self._consumer = consumer_factory(consumer_config(settings))
        self._dead_letters = DeadLetterPublisher(settings)
        self._buffer: list[SourceRecord] = []
        self._backoff_seconds = 0.0
        self.batches_committed = 0
        self.records_stored = 0
        self.records_dead_lettered = 0

    def run(self, stop: threading.Event) -> None:
        self._consumer.subscribe(
            [self._settings.views_topic],
            on_assign=_log_assigned,
            on_revoke=self._drop_revoked,
            on_lost=self._drop_revoked,
        )
        try:
            while not stop.is_set():
                batch = self._collect(stop)
                if batch:
                    self._deliver(batch, stop)
        finally:
            self._consumer.close()  # leaves the group, so the partitions move on at once
            log.info(
                "sink stopped",
                extra={
                    "batches_committed": self.batches_committed,
                    "records_stored": self.records_stored,
                    "records_dead_lettered": self.records_dead_lettered,
                },
            )

    def _drop_revoked(self, _consumer: Consumer, partitions: list[TopicPartition]) -> None:
        # Records of a partition we no longer own are not ours to commit; its new owner
        # starts from the last commit and redelivers them.
        revoked = {(tp.topic, tp.partition) for tp in partitions}
        log.info("partitions revoked", extra={"partitions": sorted(p for _t, p in revoked)})
        self._buffer = [r for r in self._buffer if (r.topic, r.partition) not in revoked]

    def _collect(self, stop: threading.Event) -> list[SourceRecord]:
        """Poll until the batch is full, its wait time has passed, or a stop is requested."""
        max_records = self._settings.sink_batch_max_records
        window_seconds = self._settings.sink_batch_max_wait_ms / 1000
        deadline: float | None = None
        while len(self._buffer) < max_records and not stop.is_set():
            timeout = _POLL_SLICE_SECONDS
            if deadline is not None:
                timeout = min(timeout, deadline - time.monotonic())
                if timeout <= 0:
                    break
            for message in self._consumer.consume(max_records - len(self._buffer), timeout):
                error = message.error()
                if error is None:
                    self._buffer.append(_source_record(message))
                elif error.fatal():
                    raise KafkaException(error)
                else:
                    log.warning("consumer error: %s", error)
            if deadline is None and self._buffer:
                deadline = time.monotonic() + window_seconds
        batch, self._buffer = self._buffer, []
        return batch

    def _deliver(self, batch: list[SourceRecord], stop: threading.Event) -> None:
        if self._backoff_seconds:
            stop.wait(self._backoff_seconds)
        try:
            result = store_batch(batch, self._writer, self._settings.sink_max_record_bytes)
            if result.rejected:
                self._dead_letters.publish(result.rejected)
        except (StoreUnavailable, KafkaException) as exc:
            self._retry_later(batch, exc)
            return
        self._backoff_seconds = 0.0
        self._commit(batch, result)

    def _retry_later(self, batch: list[SourceRecord], exc: Exception) -> None:
        initial = self._settings.sink_retry_initial_ms / 1000
        cap = self._settings.sink_retry_max_ms / 1000
        self._backoff_seconds = min(cap, max(initial, self._backoff_seconds * 2))
        log.warning(
            "batch not stored, redelivering after back-off",
            extra={"error": str(exc), "backoff_seconds": self._backoff_seconds},
        )
        for (topic, partition), (first, _last) in _offset_ranges(batch).items():
            try:
                self._consumer.seek(TopicPartition(topic, partition, first))
            except KafkaException as seek_error:  # revoked meanwhile: its new owner redelivers
                log.info("seek skipped: %s", seek_error)

    def _commit(self, batch: list[SourceRecord], result: BatchResult) -> None:
        try:
            next_offsets = [
                TopicPartition(topic, partition, last + 1)
                for (topic, partition), (_first, last) in _offset_ranges(batch).items()
            ]
            self._consumer.commit(offsets=next_offsets, asynchronous=False)
        except KafkaException as exc:
            # A rebalance took the partitions: their new owner redelivers, ClickHouse dedups.
            log.warning("commit failed, records will be redelivered: %s", exc)
            return
        self.batches_committed += 1
        self.records_stored += result.stored
        self.records_dead_lettered += len(result.rejected)
        # The running totals and RSS make memory over processed records visible in the logs.
        log.info(
            "batch committed",
            extra={
                "records": len(batch),
                "stored": result.stored,
                "dead_lettered": len(result.rejected),
                "batches_committed": self.batches_committed,
                "records_stored": self.records_stored,
                "records_dead_lettered": self.records_dead_lettered,
                "rss_bytes": resident_set_bytes(),
            },
        )


def _log_assigned(_consumer: Consumer, partitions: list[TopicPartition]) -> None:
    # Cooperative-sticky: only the partitions added by this rebalance are listed.
    log.info("partitions assigned", extra={"partitions": sorted(tp.partition for tp in partitions)})


def _source_record(message: Message) -> SourceRecord:
    topic, partition, offset = message.topic(), message.partition(), message.offset()
    assert topic is not None and partition is not None and offset is not None  # not an error
    return SourceRecord(topic, partition, offset, message.key(), message.value())


def _offset_ranges(batch: Sequence[SourceRecord]) -> dict[tuple[str, int], tuple[int, int]]:
    """(first, last) offset of each topic-partition in a batch."""
    ranges: dict[tuple[str, int], tuple[int, int]] = {}
    for record in batch:
        key, offset = (record.topic, record.partition), record.offset
        first, last = ranges.get(key, (offset, offset))
        ranges[key] = (min(first, offset), max(last, offset))
    return ranges
