"""The sink's core: turn a batch of Kafka records into one ClickHouse insert per partition.

It knows nothing of HTTP, CloudEvents or consumer groups. Triggers hand it ``SourceRecord``s and
decide what to do with the result: commit offsets and dead-letter the rejected records (consumer
loop), or answer 2xx/4xx (CloudEvent). ``StoreUnavailable`` from here means: nothing may be
committed, deliver the same records again later.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from enum import StrEnum
from typing import NamedTuple, Protocol

from pydantic import TypeAdapter, ValidationError

from functions.errors import StoreUnavailable
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


class SourceRecord(NamedTuple):
    """A Kafka record as any trigger receives it (a tuple: a sink makes one per record)."""

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

    def insert_view_documents(self, documents: Sequence[bytes], dedup_token: str) -> None:
        """Insert records' JSON values as they are (one parse, in ClickHouse)."""
        ...


# The whole partition's values are validated by one call, as the elements of a JSON array.
_ARRAY_OF_RECORDS = TypeAdapter(list[ViewRecord])


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


def _validate_at_once(records: Sequence[SourceRecord], max_record_bytes: int) -> list[ViewRecord]:
    """Every record's event, validated in one go; ``ValueError`` if any record is not valid.

    The values joined with commas are parsed as one JSON array. Each value must be an object
    (start with ``{``, end with ``}``) and the array must have one element per value: since a
    valid event is a flat object (no braces inside it), a value can then only be exactly one
    element, so values cannot combine into valid-looking events across their boundaries.
    """
    values = [r.value for r in records]
    if not all(
        v and len(v) <= max_record_bytes and v[:1] == b"{" and v[-1:] == b"}" for v in values
    ):
        raise ValueError("a record is empty, oversized or not an object")
    try:
        events = _ARRAY_OF_RECORDS.validate_json(b"[" + b",".join(values) + b"]")  # type: ignore[arg-type]
    except ValidationError as exc:
        raise ValueError("a record does not match the schema") from exc
    if len(events) != len(values):
        raise ValueError("values do not map one to one onto events")
    return events


def _insert(
    writer: ViewsWriter, records: Sequence[SourceRecord], events: list[ViewRecord], token: str
) -> None:
    """The raw documents in one insert (fast); the typed columns if ClickHouse refuses them."""
    try:
        writer.insert_view_documents([r.value for r in records if r.value], token)
    except StoreUnavailable:
        # A document ClickHouse parses differently from the schema (none is known) must not
        # stop the batch; if ClickHouse itself is down this fails too, and the caller retries.
        writer.insert_views(events, token)


def store_batch(
    records: Sequence[SourceRecord], writer: ViewsWriter, max_record_bytes: int
) -> BatchResult:
    """Insert the valid records of each partition; return the count stored and the rejected.

    Fast path: a partition's values are validated at once and inserted as they are. Only if one
    of them is not valid is each record classified, to set the poison apart with its reason.
    While one partition is inserted (ClickHouse's work, off the GIL), the next one is validated.
    Raises ``StoreUnavailable`` when an insert fails; partitions inserted before it stay inserted,
    which is harmless because redelivering them is deduplicated.
    """
    by_partition: dict[tuple[str, int], list[SourceRecord]] = {}
    for record in records:
        by_partition.setdefault((record.topic, record.partition), []).append(record)

    result = BatchResult()
    with ThreadPoolExecutor(max_workers=1, thread_name_prefix="clickhouse-insert") as inserter:
        in_flight: Future[None] | None = None
        for valid, events, token in _partition_inserts(by_partition, max_record_bytes, result):
            if in_flight is not None:
                in_flight.result()  # one insert at a time, in partition order
            in_flight = inserter.submit(_insert, writer, valid, events, token)
            result.stored += len(events)  # returned only if every insert succeeds
        if in_flight is not None:
            in_flight.result()
    return result


def _partition_inserts(
    by_partition: dict[tuple[str, int], list[SourceRecord]],
    max_record_bytes: int,
    result: BatchResult,
) -> Iterator[tuple[list[SourceRecord], list[ViewRecord], str]]:
    """(valid records, their events, dedup token) of each partition that has any; the poison
    goes to ``result`` as it is found."""
    for (topic, partition), partition_records in by_partition.items():
        first = min(r.offset for r in partition_records)
        last = max(r.offset for r in partition_records)
        try:
            events = _validate_at_once(partition_records, max_record_bytes)
            valid = partition_records
        except ValueError:
            valid, events = [], []
            for record in partition_records:
                outcome = classify(record, max_record_bytes)
                if isinstance(outcome, Rejected):
                    result.rejected.append(outcome)
                else:
                    valid.append(record)
                    events.append(outcome)
        if events:
            yield valid, events, dedup_token(topic, partition, first, last)
