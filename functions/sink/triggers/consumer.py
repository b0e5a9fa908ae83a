"""The KEDA-style trigger: a consumer-group loop that feeds the core in bounded ``Batch``es.

Per batch: insert (core) -> dead-letter the rejected records and wait for their acks -> commit
``last offset + 1`` per partition. Nothing is committed before both writes succeeded, so a crash
anywhere redelivers, and redelivery is deduplicated in ClickHouse. One batch is stored (on a
thread of its own) while the next is read and while the one before is dead-lettered and
committed; batches are committed in order. When ClickHouse or the dead-letter topic fails, the
loop seeks back to the failed batch's first offsets, drops it and whatever was read after it,
and backs off (capped, doubling); it keeps polling meanwhile, so it stays in the group and
follows rebalances.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor, wait
from contextlib import nullcontext
from functools import partial
from typing import Any

from confluent_kafka import Consumer, KafkaException, Message, TopicPartition

from functions import telemetry
from functions.errors import StoreUnavailable
from functions.kafka_config import consumer_config
from functions.logs import error_fields
from functions.settings import Settings
from functions.sink.batch import Batch, SourceRecord, rewind_positions
from functions.sink.core import BatchResult, ViewsWriter, store_batch
from functions.sink.dlq import DeadLetterPublisher
from functions.telemetry import ReceivedHeaders

__all__ = ["BatchConsumer"]

log = logging.getLogger(__name__)

# confluent-kafka's consume() returns after this long without records, so that a stop request
# or the end of a batch window is noticed promptly.
_POLL_SLICE_SECONDS = 0.1


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
        self._storer = ThreadPoolExecutor(max_workers=1, thread_name_prefix="sink-store")
        self._in_flight: tuple[Batch, Future[BatchResult]] | None = None
        self._backoff_seconds = 0.0
        # When the loop last polled (time.monotonic), read by the liveness probe (health.py).
        self.last_poll_at: float | None = None
        # Per partition, as of its last commit; read by the lag gauge on the metrics thread (the
        # consumer itself may be called only from this loop: called from there, it hung).
        self._lag: dict[tuple[str, int], int] = {}
        self._telemetry = telemetry.sink()
        # Traced: the headers of every this-many records read, for the batch span's links.
        self._header_stride = 0
        self._link_headers: list[ReceivedHeaders | None] = []
        if self._telemetry is not None:
            self._telemetry.observe_consumer(self._lag.copy, lambda: self._backoff_seconds)
            self._header_stride = self._telemetry.header_stride(settings.sink_batch_max_records)
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
                self._collect(stop)  # while the previous batch is being stored
                stored = self._await_in_flight()
                if self._buffer:
                    # The next batch is stored while this one is dead-lettered and committed:
                    # a synchronous commit would otherwise leave the storing thread idle.
                    self._start_storing(stop)
                if stored is not None:
                    self._conclude(*stored)
            self._settle()
        finally:
            self._storer.shutdown()
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
        # The batch being stored is committed before its partitions are handed over; records
        # read since, of a partition we no longer own, are not ours to commit: its new owner
        # starts from the last commit and redelivers them.
        self._settle()
        revoked = {(tp.topic, tp.partition) for tp in partitions}
        log.info("partitions revoked", extra={"partitions": sorted(p for _t, p in revoked)})
        self._buffer = [r for r in self._buffer if (r.topic, r.partition) not in revoked]
        self._link_headers = []  # links are examples: those left may name revoked records
        for topic_partition in revoked:
            self._lag.pop(topic_partition, None)

    def _collect(self, stop: threading.Event) -> None:
        """Poll until the buffer holds a full batch, its wait time has passed, or a stop is
        requested; or, with nothing read yet, until the batch in flight is stored (so that it
        is committed without waiting for more records)."""
        self.last_poll_at = time.monotonic()
        max_records = self._settings.sink_batch_max_records
        window_seconds = self._settings.sink_batch_max_wait_ms / 1000
        deadline: float | None = None
        while len(self._buffer) < max_records and not stop.is_set():
            if not self._buffer and self._in_flight is not None and self._in_flight[1].done():
                break
            self.last_poll_at = time.monotonic()
            timeout = _POLL_SLICE_SECONDS
            if deadline is not None:
                timeout = min(timeout, deadline - time.monotonic())
                if timeout <= 0:
                    break
            messages = self._consumer.consume(max_records - len(self._buffer), timeout)
            if any(map(Message.error, messages)):  # a KafkaError is true, None false
                messages = _without_errors(messages)
            if self._header_stride:
                self._link_headers.extend(map(Message.headers, messages[:: self._header_stride]))
            self._buffer.extend(_source_records(messages))
            if deadline is None and self._buffer:
                deadline = time.monotonic() + window_seconds

    def _start_storing(self, stop: threading.Event) -> None:
        if self._backoff_seconds:
            stop.wait(self._backoff_seconds)
        batch, self._buffer = Batch(self._buffer), []
        link_headers, self._link_headers = self._link_headers, []
        store: Callable[[], BatchResult] = partial(
            store_batch,
            batch,
            self._writer,
            self._settings.sink_max_record_bytes,
            self._telemetry,
        )
        if self._telemetry is not None:
            self._telemetry.begin_batch(
                batch,
                self._settings.views_topic,
                len(batch),
                link_headers,
                consumer_group=self._settings.sink_group_id,
            )
            store = self._telemetry.within_batch(batch, store)
        self._in_flight = (batch, self._storer.submit(store))

    def _settle(self) -> None:
        """Finish the batch being stored: dead-letter its poison and commit it; or, if that
        fails, rewind to it together with every record read since (else those were skipped)."""
        stored = self._await_in_flight()
        if stored is not None:
            self._conclude(*stored)

    def _await_in_flight(self) -> tuple[Batch, BatchResult] | None:
        """The batch being stored and its result, once stored; None if there was none, or if
        ClickHouse refused it (then it and every record read since are rewound)."""
        if self._in_flight is None:
            return None
        batch, storing = self._in_flight
        self._in_flight = None
        try:
            result = storing.result()
        except StoreUnavailable as exc:
            self._retry_later([batch, self._read_since()], exc)
            return None
        self._backoff_seconds = 0.0
        return batch, result

    def _conclude(self, batch: Batch, result: BatchResult) -> None:
        """Dead-letter a stored batch's poison, then commit it. If the dead-letter topic fails,
        rewind to the batch, with the one being stored meanwhile and every record read since."""
        try:
            if result.rejected:
                self._dead_letter(batch, result)
        except KafkaException as exc:
            later = self._abandon_in_flight()
            self._retry_later([batch, *later, self._read_since()], exc)
            return
        self._commit(batch, result)

    def _dead_letter(self, batch: Batch, result: BatchResult) -> None:
        if self._telemetry is None:
            self._dead_letters.publish(result.rejected)
            return
        reasons = (rejected.reason.value for rejected in result.rejected)
        with self._telemetry.dead_letter_span(
            batch, self._settings.dlq_topic, reasons
        ) as trace_headers:
            self._dead_letters.publish(result.rejected, trace_headers)

    def _abandon_in_flight(self) -> list[Batch]:
        """Wait for the batch being stored, whatever its outcome, and return it: it is read
        again (storing it twice is harmless, the store is idempotent)."""
        if self._in_flight is None:
            return []
        batch, storing = self._in_flight
        self._in_flight = None
        wait([storing])
        return [batch]

    def _read_since(self) -> Batch:
        """The records read since the batch in flight, dropped (they are rewound with it)."""
        read, self._buffer = Batch(self._buffer), []
        self._link_headers = []
        return read

    def _retry_later(self, batches: list[Batch], exc: Exception) -> None:
        initial = self._settings.sink_retry_initial_ms / 1000
        cap = self._settings.sink_retry_max_ms / 1000
        previous, self._backoff_seconds = (
            self._backoff_seconds,
            min(cap, max(initial, self._backoff_seconds * 2)),
        )
        log.warning(
            "batch not stored, redelivering after back-off",
            extra={**error_fields(exc), "backoff_seconds": self._backoff_seconds},
        )
        if previous < cap <= self._backoff_seconds:  # once an outage, as the retries run out
            log.error(
                "batch still not stored after its retries; retrying at the capped back-off",
                extra={**error_fields(exc), "backoff_seconds": self._backoff_seconds},
            )
        if self._telemetry is not None:
            for batch in batches:
                self._telemetry.end_batch(batch, exc)
            cause = "store_unavailable" if isinstance(exc, StoreUnavailable) else "dead_letter"
            self._telemetry.retried(cause)
        for (topic, partition), first in rewind_positions(batches).items():
            try:
                self._consumer.seek(TopicPartition(topic, partition, first))
            except KafkaException as seek_error:  # revoked meanwhile: its new owner redelivers
                log.info("seek skipped: %s", seek_error)

    def _commit(self, batch: Batch, result: BatchResult) -> None:
        offsets = batch.commit_offsets()
        try:
            next_offsets = [
                TopicPartition(topic, partition, offset)
                for (topic, partition), offset in offsets.items()
            ]
            with (
                nullcontext()
                if self._telemetry is None
                else self._telemetry.commit_span(batch, self._settings.views_topic)
            ):
                self._consumer.commit(offsets=next_offsets, asynchronous=False)
        except KafkaException as exc:
            # A rebalance took the partitions: their new owner redelivers, ClickHouse dedups.
            log.warning("commit failed, records will be redelivered: %s", exc)
            if self._telemetry is not None:
                self._telemetry.end_batch(batch, exc)
            return
        self.batches_committed += 1
        self.records_stored += result.stored
        self.records_dead_lettered += len(result.rejected)
        # The running totals and RSS make memory over processed records visible in the logs;
        # written in the batch's span, the line carries the batch's trace.id.
        with nullcontext() if self._telemetry is None else self._telemetry.in_batch(batch):
            log.info(
                "batch committed",
                extra={
                    "records": len(batch),
                    "stored": result.stored,
                    "dead_lettered": len(result.rejected),
                    "batches_committed": self.batches_committed,
                    "records_stored": self.records_stored,
                    "records_dead_lettered": self.records_dead_lettered,
                    "rss_bytes": telemetry.resident_set_bytes(),
                },
            )
        if self._telemetry is not None:
            self._telemetry.end_batch(batch)
            self._measure_lag(offsets)

    def _measure_lag(self, committed: dict[tuple[str, int], int]) -> None:
        """Records of each committed partition after the commit, from the high watermark the
        consumer last fetched (cached: no broker round trip)."""
        for (topic, partition), next_offset in committed.items():
            _low, high = self._consumer.get_watermark_offsets(
                TopicPartition(topic, partition), cached=True
            )
            if high >= 0:
                self._lag[(topic, partition)] = max(0, high - next_offset)


def _log_assigned(_consumer: Consumer, partitions: list[TopicPartition]) -> None:
    # Cooperative-sticky: only the partitions added by this rebalance are listed.
    log.info("partitions assigned", extra={"partitions": sorted(tp.partition for tp in partitions)})


def _without_errors(messages: list[Message]) -> list[Message]:
    kept = []
    for message in messages:
        error = message.error()
        if error is None:
            kept.append(message)
        elif error.fatal():
            raise KafkaException(error)
        else:
            log.warning("consumer error: %s", error)
    return kept


_new_source_record = partial(tuple.__new__, SourceRecord)


def _source_records(messages: list[Message]) -> Iterator[SourceRecord]:
    # Only C functions run per message (method descriptors, zip, tuple.__new__): a Python
    # function per message was a fifth of the consumer loop, the thread that reads the batches.
    fields = zip(
        map(Message.topic, messages),
        map(Message.partition, messages),
        map(Message.offset, messages),
        map(Message.key, messages),
        map(Message.value, messages),
        strict=True,
    )
    return map(_new_source_record, fields)
