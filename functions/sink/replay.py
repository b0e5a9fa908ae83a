"""Dead letters an operator can act on: list them by reason, replay the ones that now pass.

``python -m functions.sink.replay list`` (``make dlq``) counts the records of the dead-letter
topic by reason and lists each with its origin (topic, partition, offset) and what is wrong with
it; the values (other viewers' data) only with ``--bodies``. ``replay`` (``make dlq-replay``)
judges the selected records again as the sink does now (same model, same
``SINK_MAX_RECORD_BYTES``): those that pass go back to the views topic as the ingest function
writes them, with their original ``event_id``, and the sink stores them like any other; a
record replayed twice is stored once (ClickHouse collapses rows by ``event_id``). Those that
still fail stay in the dead-letter topic, as every record does until its retention (30 days)
ends; nothing is deleted.
``--dry-run`` says what would be replayed and sends nothing.
"""

from __future__ import annotations

import argparse
import sys
import time
import uuid
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from confluent_kafka import (
    OFFSET_BEGINNING,
    Consumer,
    KafkaException,
    Message,
    Producer,
    TopicPartition,
)

from functions.kafka_config import dead_letter_reader_config, producer_config
from functions.settings import Settings, get_settings
from functions.sink.batch import SourceRecord
from functions.sink.core import Rejected, classify
from functions.sink.dlq import DETAIL_HEADER, ORIGIN_HEADERS, REASON_HEADER

__all__ = ["DeadLetter", "main", "read_dead_letters", "replay", "select"]

REPLAYED_FROM_HEADER = "dlq.replayed-from"
_POLL_SLICE_SECONDS = 0.2


@dataclass(frozen=True, slots=True)
class DeadLetter:
    """A record of the dead-letter topic: where it is, why it is there, where it came from."""

    partition: int
    offset: int
    reason: str
    detail: str
    origin: SourceRecord

    def describe(self, with_body: bool) -> str:
        origin = self.origin
        line = (
            f"{self.partition}:{self.offset}\t{self.reason}\t"
            f"{origin.topic}/{origin.partition}/{origin.offset}\t{self.detail}"
        )
        if with_body:
            body = origin.value.decode(errors="replace") if origin.value is not None else "(none)"
            line += f"\n\tvalue: {body}"
        return line


@dataclass(frozen=True, slots=True)
class ReplayReport:
    passed: list[DeadLetter]
    still_failing: list[tuple[DeadLetter, Rejected]]


def read_dead_letters(settings: Settings, timeout_seconds: float = 30.0) -> list[DeadLetter]:
    """Every record of the dead-letter topic up to its end when called, oldest first."""
    consumer = Consumer(dead_letter_reader_config(settings, f"dlq-reader-{uuid.uuid4().hex}"))
    try:
        metadata = consumer.list_topics(settings.dlq_topic, timeout=10).topics[settings.dlq_topic]
        if metadata.error is not None:
            raise KafkaException(metadata.error)
        remaining: dict[int, int] = {}  # partition -> offset of its last record
        for partition in metadata.partitions:
            low, high = consumer.get_watermark_offsets(
                TopicPartition(settings.dlq_topic, partition), timeout=10
            )
            if high > low:
                remaining[partition] = high - 1
        consumer.assign(
            [TopicPartition(settings.dlq_topic, p, OFFSET_BEGINNING) for p in remaining]
        )
        letters: list[DeadLetter] = []
        deadline = time.monotonic() + timeout_seconds
        while remaining:
            if time.monotonic() > deadline:
                raise TimeoutError(f"{settings.dlq_topic} not read in {timeout_seconds}s")
            # consume() returns early only once it has this many: short waits, many calls.
            for message in consumer.consume(1000, _POLL_SLICE_SECONDS):
                if message.error() is not None:
                    raise KafkaException(message.error())
                letter = _dead_letter(message)
                letters.append(letter)
                if remaining.get(letter.partition, -1) <= letter.offset:
                    remaining.pop(letter.partition, None)
        return letters
    finally:
        consumer.close()


def _dead_letter(message: Message) -> DeadLetter:
    headers = {
        name: value.decode() if isinstance(value, bytes) else str(value or "")
        for name, value in dict(message.headers() or {}).items()  # a consumer gives pairs
    }
    topic_header, partition_header, offset_header = ORIGIN_HEADERS
    return DeadLetter(
        partition=message.partition() or 0,  # None only for error events, raised above
        offset=message.offset() or 0,
        reason=headers.get(REASON_HEADER, "unknown"),
        detail=headers.get(DETAIL_HEADER, ""),
        origin=SourceRecord(
            topic=headers.get(topic_header, ""),
            partition=int(headers.get(partition_header) or -1),
            offset=int(headers.get(offset_header) or -1),
            key=message.key(),
            value=message.value(),
        ),
    )


def select(
    letters: Iterable[DeadLetter],
    reason: str | None = None,
    offsets: tuple[int, int] | None = None,
) -> list[DeadLetter]:
    """The letters of ``reason`` (if given) whose dead-letter offset is in ``offsets``
    (inclusive, if given)."""
    return [
        letter
        for letter in letters
        if (reason is None or letter.reason == reason)
        and (offsets is None or offsets[0] <= letter.offset <= offsets[1])
    ]


def replay(settings: Settings, letters: Sequence[DeadLetter], dry_run: bool) -> ReplayReport:
    """Send the letters that now pass to the views topic (unless ``dry_run``), once each
    acknowledged; the others are reported, and stay where they are."""
    passed: list[DeadLetter] = []
    still_failing: list[tuple[DeadLetter, Rejected]] = []
    producer = None if dry_run else Producer(producer_config(settings))
    failures: list[str] = []
    for letter in letters:
        judged = classify(letter.origin, settings.sink_max_record_bytes)
        if isinstance(judged, Rejected):
            still_failing.append((letter, judged))
            continue
        passed.append(letter)
        if producer is not None:
            key, value = judged.to_kafka()  # as the ingest function writes it: same event_id
            producer.produce(
                settings.views_topic,
                key=key,
                value=value,
                headers=[
                    (
                        REPLAYED_FROM_HEADER,
                        f"{settings.dlq_topic}/{letter.partition}/{letter.offset}".encode(),
                    )
                ],
                on_delivery=lambda err, _msg: failures.append(str(err)) if err else None,
            )
    if producer is not None:
        unsent = producer.flush(settings.kafka_delivery_timeout_ms / 1000)
        if unsent or failures:
            raise KafkaException(
                f"{settings.views_topic} did not acknowledge {unsent + len(failures)} replayed "
                f"records ({'; '.join(failures[:3])}); replaying again is harmless"
            )
    return ReplayReport(passed, still_failing)


def _offset_range(text: str) -> tuple[int, int]:
    first, _, last = text.partition("-")
    return int(first), int(last or first)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m functions.sink.replay",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    commands = parser.add_subparsers(dest="command", required=True)
    listing = commands.add_parser("list", help="count by reason and list the dead letters")
    listing.add_argument("--bodies", action="store_true", help="print the record values too")
    again = commands.add_parser("replay", help="send the records that now pass to the sink")
    again.add_argument("--dry-run", action="store_true", help="say what would be sent")
    for command in (listing, again):
        command.add_argument("--reason", help="only this reason (e.g. oversized)")
        command.add_argument(
            "--offsets",
            type=_offset_range,
            metavar="FIRST-LAST",
            help="only these offsets of the dead-letter topic (inclusive)",
        )
    args = parser.parse_args(argv)
    settings = get_settings()
    letters = select(read_dead_letters(settings), args.reason, args.offsets)
    out = sys.stdout
    if args.command == "list":
        out.write(f"{len(letters)} dead letters in {settings.dlq_topic}\n")
        for reason, count in Counter(letter.reason for letter in letters).most_common():
            out.write(f"{count:>8}  {reason}\n")
        out.write("dlq partition:offset\treason\torigin topic/partition/offset\tdetail\n")
        for letter in letters:
            out.write(letter.describe(args.bodies) + "\n")
        return 0
    report = replay(settings, letters, args.dry_run)
    verb = "would replay" if args.dry_run else "replayed"
    out.write(f"{verb} {len(report.passed)} of {len(letters)} to {settings.views_topic}\n")
    for letter in report.passed:
        out.write(f"  {verb}: {letter.describe(with_body=False)}\n")
    for letter, rejected in report.still_failing:
        out.write(f"  still failing ({rejected.reason.value}): {letter.describe(False)}\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
