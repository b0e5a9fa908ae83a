"""The sink's core: store a ``Batch`` of Kafka records, one ClickHouse insert per partition.

It knows nothing of HTTP, CloudEvents or consumer groups. Triggers hand it a ``Batch`` and
decide what to do with the result: commit offsets and dead-letter the rejected records (consumer
loop), or answer 2xx/4xx (CloudEvent). Two outcomes are told apart once, by the store:
``StoreUnavailable`` (ClickHouse cannot take inserts: nothing may be committed, the same records
are delivered again later; raised at the first failing insert) and ``RecordsRefused`` (ClickHouse
is up and refused a partition's lines: its records are judged one by one here, the poison set
apart with its reason).
"""

from __future__ import annotations

from collections.abc import Sequence
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Protocol

from pydantic import ValidationError

from clickhouse import queries
from clickhouse.canonical import is_canonical
from functions.errors import RecordsRefused
from functions.events import ViewRecord, invalid_json_message
from functions.sink.batch import Batch, SourceRecord
from functions.telemetry import SinkTelemetry

__all__ = [
    "BatchResult",
    "RejectReason",
    "Rejected",
    "ViewsWriter",
    "classify",
    "store_batch",
]


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
    def insert_views(self, records: Sequence[ViewRecord], dedup_token: str) -> None:
        """Insert validated records; ``StoreUnavailable`` if ClickHouse cannot take them."""
        ...

    def insert_canonical_lines(self, lines: bytes, dedup_token: str) -> None:
        """Insert records as the ingest function writes them, one per line, checked and parsed
        by ClickHouse; ``RecordsRefused`` if any line is not such a record, ``StoreUnavailable``
        if ClickHouse cannot take inserts."""
        ...


_VIEWS = queries.VIEWS_TABLE.rpartition(".")[2]
_CANONICAL_LINES = queries.CANONICAL_LINES_TABLE.rpartition(".")[2]


def _inserting(
    sink_telemetry: SinkTelemetry | None, table: str, rows: int, dedup_token: str
) -> AbstractContextManager[None]:
    """The insert's CLIENT span (a child of the trigger's batch span), if traced."""
    if sink_telemetry is None:
        return nullcontext()
    return sink_telemetry.insert_span(table, rows, dedup_token)


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
        not_json = invalid_json_message(errors)
        if not_json is not None:
            return Rejected(record, RejectReason.INVALID_JSON, not_json)
        detail = "; ".join(
            f"{'.'.join(str(part) for part in error['loc']) or '(root)'}: {error['msg']}"
            for error in errors
        )
        return Rejected(record, RejectReason.SCHEMA_VIOLATION, detail)


# Tokens of a partition's other inserts, each always with the same records: rows that a refused
# insert may have left behind can never make ClickHouse drop another insert as a repeat (repeated
# rows collapse under FINAL; dropped ones would be lost).
_CANONICAL_PART_SUFFIX = "-canonical"  # the partition's records of the canonical form
_REST_SUFFIX = "-rest"  # the others, validated here
_VALIDATED_SUFFIX = "-validated"  # all of them, validated here


def store_batch(
    batch: Batch,
    writer: ViewsWriter,
    max_record_bytes: int,
    sink_telemetry: SinkTelemetry | None = None,
) -> BatchResult:
    """Insert the valid records of each partition; return the count stored and the rejected.

    Fast path: a partition's values go to ClickHouse as they are, one line each, and ClickHouse
    stores them only if every one is a record exactly as the ingest function writes it. If it
    refuses them (poison, another producer's spelling), the records of that form are sent again
    and only the others are classified here: the poison set apart with its reason, the events
    inserted as typed columns. If ClickHouse refuses those again, every record of the partition
    takes that validated path.
    Raises ``StoreUnavailable`` at the first insert ClickHouse cannot take; partitions inserted
    before stay inserted, which is harmless because redelivering them is deduplicated.
    With ``sink_telemetry`` (the trigger's, whose batch span is current), the validation and
    each insert are spans.
    """
    result = BatchResult()
    for topic_partition, records in batch.partitions():
        token = batch.dedup_token(topic_partition)
        _store_partition(records, token, writer, max_record_bytes, result, sink_telemetry)
    return result


def _store_partition(
    records: list[SourceRecord],
    token: str,
    writer: ViewsWriter,
    max_record_bytes: int,
    result: BatchResult,
    sink_telemetry: SinkTelemetry | None,
) -> None:
    if _insert_canonical(writer, records, token, max_record_bytes, sink_telemetry):
        result.stored += len(records)
        return
    canonical: list[SourceRecord] = []
    rest: list[SourceRecord] = []
    for record in records:
        value = record.value
        if value and len(value) <= max_record_bytes and is_canonical(value):
            canonical.append(record)
        else:
            rest.append(record)
    # One poison record then costs its own validation, not its partition's (~10 µs a record).
    if (
        canonical
        and rest
        and _insert_canonical(
            writer, canonical, token + _CANONICAL_PART_SUFFIX, max_record_bytes, sink_telemetry
        )
    ):
        result.stored += len(canonical)
        validated = rest, token + _REST_SUFFIX
    else:
        validated = records, token + _VALIDATED_SUFFIX
    _store_validated(*validated, writer, max_record_bytes, result, sink_telemetry)


def _insert_canonical(
    writer: ViewsWriter,
    records: list[SourceRecord],
    dedup_token: str,
    max_record_bytes: int,
    sink_telemetry: SinkTelemetry | None,
) -> bool:
    """Whether ClickHouse stored every record through the fast path (False: it refused them, or
    they cannot be sent as lines); ``StoreUnavailable`` passes through."""
    values = [r.value for r in records]
    if not all(values):
        return False  # an empty value would be an empty line, which LineAsString may skip
    if max(map(len, values)) > max_record_bytes:  # type: ignore[arg-type]
        return False  # the limit may be set below a valid record's size
    lines = b"\n".join(values)  # type: ignore[arg-type]
    if lines.count(b"\n") != len(values) - 1:
        return False  # a value holding a line break would be read as two records
    try:
        with _inserting(sink_telemetry, _CANONICAL_LINES, len(values), dedup_token):
            writer.insert_canonical_lines(lines, dedup_token)
    except RecordsRefused:
        return False
    return True


def _store_validated(
    records: list[SourceRecord],
    dedup_token: str,
    writer: ViewsWriter,
    max_record_bytes: int,
    result: BatchResult,
    sink_telemetry: SinkTelemetry | None,
) -> None:
    events = []
    with nullcontext() if sink_telemetry is None else sink_telemetry.validation_span(len(records)):
        for record in records:
            outcome = classify(record, max_record_bytes)
            if isinstance(outcome, Rejected):
                result.rejected.append(outcome)
            else:
                events.append(outcome)
    if events:
        with _inserting(sink_telemetry, _VIEWS, len(events), dedup_token):
            writer.insert_views(events, dedup_token)
        result.stored += len(events)
