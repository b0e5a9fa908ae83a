"""The sink's core: turn a batch of Kafka records into one ClickHouse insert per partition.

It knows nothing of HTTP, CloudEvents or consumer groups. Triggers hand it ``SourceRecord``s and
decide what to do with the result: commit offsets and dead-letter the rejected records (consumer
loop), or answer 2xx/4xx (CloudEvent). ``StoreUnavailable`` from here means: nothing may be
committed, deliver the same records again later.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from enum import StrEnum
from itertools import groupby
from operator import itemgetter
from typing import NamedTuple, Protocol

from pydantic import ValidationError

from functions.errors import StoreUnavailable
from functions.events import ViewRecord

__all__ = [
    "CANONICAL_RECORD_PATTERN",
    "BatchResult",
    "RejectReason",
    "Rejected",
    "SourceRecord",
    "ViewsWriter",
    "by_partition",
    "classify",
    "dedup_token",
    "offset_ranges",
    "store_batch",
]


class SourceRecord(NamedTuple):
    """A Kafka record as any trigger receives it (a tuple: a sink makes one per record)."""

    topic: str
    partition: int
    offset: int
    key: bytes | None
    value: bytes | None


_TOPIC_PARTITION = itemgetter(0, 1)  # of a SourceRecord


class RejectReason(StrEnum):
    """Why a record can never be stored; retrying it would fail the same way."""

    EMPTY = "empty"
    OVERSIZED = "oversized"
    INVALID_JSON = "invalid_json"
    SCHEMA_VIOLATION = "schema_violation"


@dataclass(frozen=True, slots=True)
class Rejected:
    """A poison record and a human-readable account of what is wrong with it."""

    record: SourceRecord
    reason: RejectReason
    detail: str


@dataclass(slots=True)
class BatchResult:
    stored: int = 0
    rejected: list[Rejected] = field(default_factory=list)
    # (first, last) offset of each topic-partition of the batch: what a consumer commits.
    offset_ranges: dict[tuple[str, int], tuple[int, int]] = field(default_factory=dict)


class ViewsWriter(Protocol):
    def insert_views(self, records: Sequence[ViewRecord], dedup_token: str) -> None: ...

    def insert_canonical_lines(self, lines: bytes, dedup_token: str) -> None:
        """Insert records as the ingest function writes them, one per line, checked and parsed
        by ClickHouse; ``StoreUnavailable`` if any line is not such a record."""
        ...


def classify(record: SourceRecord, max_record_bytes: int) -> ViewRecord | Rejected:
    """The event a record holds, or why it is poison. Pure: no I/O."""
    value = record.value
    if not value:
        return Rejected(record, RejectReason.EMPTY, "the record has no value")
    if len(value) > max_record_bytes:
        return Rejected(
            record,
            RejectReason.OVERSIZED,
            f"{len(value)} bytes is over the {max_record_bytes}-byte limit",
        )
    try:
        return ViewRecord.model_validate_json(value)
    except ValidationError as exc:
        errors = exc.errors(include_url=False, include_input=False)
        if any(error["type"] == "json_invalid" for error in errors):
            return Rejected(record, RejectReason.INVALID_JSON, errors[0]["msg"])
        detail = "; ".join(
            f"{'.'.join(str(part) for part in error['loc']) or '(root)'}: {error['msg']}"
            for error in errors
        )
        return Rejected(record, RejectReason.SCHEMA_VIOLATION, detail)


def dedup_token(topic: str, partition: int, first_offset: int, last_offset: int) -> str:
    """Same records, same token: ClickHouse drops a repeated insert of an offset range."""
    return f"{topic}-{partition}-{first_offset}-{last_offset}"


# Tokens of a partition's other inserts, each always with the same records: rows that a failed
# insert may have left behind can never make ClickHouse drop another insert as a repeat (repeated
# rows collapse under FINAL; dropped ones would be lost).
_CANONICAL_PART_SUFFIX = "-canonical"  # the partition's records of the canonical form
_REST_SUFFIX = "-rest"  # the others, validated here
_VALIDATED_SUFFIX = "-validated"  # all of them, validated here

_UUID = "[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}"
_TIME = (
    "(19[7-9][0-9]|2[01][0-9][0-9])-(0[1-9]|1[0-2])-(0[1-9]|[12][0-9]|3[01])"
    "T([01][0-9]|2[0-3]):[0-5][0-9]:[0-5][0-9]([.][0-9]{1,6})?Z"
)
# The form ClickHouse accepts on the fast path (clickhouse/migrations/0003; a test keeps the two
# equal). Here it only sorts the records of a refused partition: those of this form are sent to
# ClickHouse again, which checks them again, so the model stays the one definition of valid.
CANONICAL_RECORD_PATTERN = (
    f'^[{{]"schema_version":1,"event_id":"{_UUID}","user_id":"{_UUID}","movie_id":"{_UUID}"'
    f',"movie_time_offset":(0|[1-9][0-9]{{0,8}}),"event_time":"{_TIME}","received_at":"{_TIME}'
    '"[}]$'
)
_CANONICAL_RECORD = re.compile(CANONICAL_RECORD_PATTERN.encode())


def store_batch(
    records: Sequence[SourceRecord], writer: ViewsWriter, max_record_bytes: int
) -> BatchResult:
    """Insert the valid records of each partition; return the count stored and the rejected.

    Fast path: a partition's values go to ClickHouse as they are, one line each, and ClickHouse
    stores them only if every one is a record exactly as the ingest function writes it. If it
    refuses them (poison, another producer's spelling), the records of that form are sent again
    and only the others are classified here: the poison set apart with its reason, the events
    inserted as typed columns. If ClickHouse refuses again (or is down), every record of the
    partition takes that validated path.
    Raises ``StoreUnavailable`` when the validated insert fails too; partitions inserted before
    stay inserted, which is harmless because redelivering them is deduplicated.
    """
    grouped = by_partition(records)
    result = BatchResult(offset_ranges=offset_ranges(grouped))
    for (topic, partition), partition_records in grouped.items():
        token = dedup_token(topic, partition, *result.offset_ranges[(topic, partition)])
        _store_partition(partition_records, token, writer, max_record_bytes, result)
    return result


def by_partition(records: Sequence[SourceRecord]) -> dict[tuple[str, int], list[SourceRecord]]:
    """The records of each topic-partition, in the order read (a partition's records come in
    offset order, so the first and last of a list are its offset range)."""
    grouped: dict[tuple[str, int], list[SourceRecord]] = {}
    # A consumer hands records out in runs of one partition: grouping whole runs keeps the
    # per-record work in C (per record in Python it was a fifth of the storing thread).
    for topic_partition, run in groupby(records, _TOPIC_PARTITION):
        grouped.setdefault(topic_partition, []).extend(run)
    return grouped


def offset_ranges(
    grouped: dict[tuple[str, int], list[SourceRecord]],
) -> dict[tuple[str, int], tuple[int, int]]:
    """(first, last) offset of each topic-partition grouped by ``by_partition``."""
    return {key: (run[0].offset, run[-1].offset) for key, run in grouped.items()}


def _store_partition(
    records: list[SourceRecord],
    token: str,
    writer: ViewsWriter,
    max_record_bytes: int,
    result: BatchResult,
) -> None:
    if _insert_canonical(writer, records, token, max_record_bytes):
        result.stored += len(records)
        return
    canonical: list[SourceRecord] = []
    rest: list[SourceRecord] = []
    for record in records:
        value = record.value
        if value and len(value) <= max_record_bytes and _CANONICAL_RECORD.fullmatch(value):
            canonical.append(record)
        else:
            rest.append(record)
    # One poison record then costs its own validation, not its partition's (~10 µs a record).
    if (
        canonical
        and rest
        and _insert_canonical(writer, canonical, token + _CANONICAL_PART_SUFFIX, max_record_bytes)
    ):
        result.stored += len(canonical)
        _store_validated(rest, writer, token + _REST_SUFFIX, max_record_bytes, result)
    else:
        _store_validated(records, writer, token + _VALIDATED_SUFFIX, max_record_bytes, result)


def _insert_canonical(
    writer: ViewsWriter, records: list[SourceRecord], dedup_token: str, max_record_bytes: int
) -> bool:
    """Whether ClickHouse stored every record through the fast path."""
    values = [r.value for r in records]
    if not all(values):
        return False  # an empty value would be an empty line, which LineAsString may skip
    if max(map(len, values)) > max_record_bytes:  # type: ignore[arg-type]
        return False  # the limit may be set below a valid record's size
    lines = b"\n".join(values)  # type: ignore[arg-type]
    if lines.count(b"\n") != len(values) - 1:
        return False  # a value holding a line break would be read as two records
    try:
        writer.insert_canonical_lines(lines, dedup_token)
    except StoreUnavailable:
        return False
    return True


def _store_validated(
    records: list[SourceRecord],
    writer: ViewsWriter,
    dedup_token: str,
    max_record_bytes: int,
    result: BatchResult,
) -> None:
    events = []
    for record in records:
        outcome = classify(record, max_record_bytes)
        if isinstance(outcome, Rejected):
            result.rejected.append(outcome)
        else:
            events.append(outcome)
    if events:
        writer.insert_views(events, dedup_token)
        result.stored += len(events)
