"""The sink's core: turn a batch of Kafka records into one ClickHouse insert per partition.

It knows nothing of HTTP, CloudEvents or consumer groups. Triggers hand it ``SourceRecord``s and
decide what to do with the result: commit offsets and dead-letter the rejected records (consumer
loop), or answer 2xx/4xx (CloudEvent). ``StoreUnavailable`` from here means: nothing may be
committed, deliver the same records again later.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Protocol

from pydantic import ValidationError

from functions.events import ViewRecord

__all__ = [
    "BatchResult",
    "RejectReason",
    "Rejected",
    "SourceRecord",
    "ViewsWriter",
    "classify",
    "dedup_token",
    "store_batch",
]


@dataclass(frozen=True, slots=True)
class SourceRecord:
    """A Kafka record as any trigger receives it."""

    topic: str
    partition: int
    offset: int
    key: bytes | None
    value: bytes | None


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


class ViewsWriter(Protocol):
    def insert_views(self, records: Sequence[ViewRecord], dedup_token: str) -> None: ...


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


def store_batch(
    records: Sequence[SourceRecord], writer: ViewsWriter, max_record_bytes: int
) -> BatchResult:
    """Insert the valid records of each partition; return the count stored and the rejected.

    Raises ``StoreUnavailable`` when an insert fails; partitions inserted before it stay inserted,
    which is harmless because redelivering them is deduplicated.
    """
    by_partition: dict[tuple[str, int], list[SourceRecord]] = {}
    for record in records:
        by_partition.setdefault((record.topic, record.partition), []).append(record)

    result = BatchResult()
    for (topic, partition), partition_records in by_partition.items():
        events: list[ViewRecord] = []
        for record in partition_records:
            outcome = classify(record, max_record_bytes)
            if isinstance(outcome, Rejected):
                result.rejected.append(outcome)
            else:
                events.append(outcome)
        if events:
            first = min(r.offset for r in partition_records)
            last = max(r.offset for r in partition_records)
            writer.insert_views(events, dedup_token(topic, partition, first, last))
            result.stored += len(events)
    return result
