"""The sink core: classification of records (pure) and idempotent batch inserts (real engine)."""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from datetime import UTC, datetime, timedelta

import orjson
import pytest
from support import count_final, view_record

from functions.events import ViewRecord
from functions.sink.core import Rejected, RejectReason, SourceRecord, classify, store_batch
from functions.store import ViewStore

MAX_BYTES = 1024


def _record(value: bytes | None, offset: int = 0) -> SourceRecord:
    return SourceRecord("views", 0, offset, b"key", value)


def _valid_value() -> bytes:
    record = view_record(uuid.uuid4(), uuid.uuid4(), 1, datetime(2026, 1, 1, tzinfo=UTC))
    return record.to_kafka()[1]


def test_valid_record_parses() -> None:
    outcome = classify(_record(_valid_value()), MAX_BYTES)
    assert not isinstance(outcome, Rejected)
    assert outcome.movie_time_offset == 1


@pytest.mark.parametrize(
    ("value", "reason", "in_detail"),
    [
        (None, RejectReason.EMPTY, "no value"),
        (b"", RejectReason.EMPTY, "no value"),
        (b"x" * (MAX_BYTES + 1), RejectReason.OVERSIZED, "1025 bytes"),
        (b"\xff\xfe not utf-8", RejectReason.INVALID_JSON, ""),
        (b"[1, 2", RejectReason.INVALID_JSON, ""),
        (b"[]", RejectReason.SCHEMA_VIOLATION, "(root)"),
        (b'{"schema_version": 2}', RejectReason.SCHEMA_VIOLATION, "schema_version"),
    ],
)
def test_poison_is_classified(value: bytes | None, reason: RejectReason, in_detail: str) -> None:
    outcome = classify(_record(value), MAX_BYTES)
    assert isinstance(outcome, Rejected)
    assert outcome.reason is reason
    assert in_detail in outcome.detail


def test_unknown_field_and_lax_types_are_schema_violations() -> None:
    document = orjson.loads(_valid_value())
    for bad in ({**document, "extra": 1}, {**document, "movie_time_offset": "1"}):
        outcome = classify(_record(orjson.dumps(bad)), MAX_BYTES)
        assert isinstance(outcome, Rejected)
        assert outcome.reason is RejectReason.SCHEMA_VIOLATION


def test_overlapping_redelivery_collapses_under_final(store: ViewStore) -> None:
    user, movie = uuid.uuid4(), uuid.uuid4()
    values = [
        view_record(user, movie, i, datetime(2026, 11, 1, 12, i, tzinfo=UTC)).to_kafka()[1]
        for i in range(3)
    ]
    batch = [SourceRecord("views", 4, 100 + i, None, v) for i, v in enumerate(values)]
    store_batch(batch, store, MAX_BYTES)
    # A different range (so a different dedup token): only the table engine can collapse it.
    store_batch(batch[1:], store, MAX_BYTES)
    store_batch(batch, store, MAX_BYTES)
    assert count_final(store, "views", user) == 3
    assert count_final(store, "latest_view", user) == 1
    position = store.latest_position(user, movie)
    assert position is not None and position.movie_time_offset == 2


class RecordingWriter:
    """The store, noting (path, token) of each insert that succeeded."""

    def __init__(self, store: ViewStore) -> None:
        self._store = store
        self.inserts: list[tuple[str, str]] = []

    def insert_views(self, records: Sequence[ViewRecord], dedup_token: str) -> None:
        self._store.insert_views(records, dedup_token)
        self.inserts.append(("typed", dedup_token))

    def insert_canonical_lines(self, lines: bytes, dedup_token: str) -> None:
        self._store.insert_canonical_lines(lines, dedup_token)
        self.inserts.append(("lines", dedup_token))


def _values(user: uuid.UUID, count: int) -> list[bytes]:
    movie = uuid.uuid4()
    moment = datetime(2026, 11, 1, 12, tzinfo=UTC)
    return [
        view_record(user, movie, i, moment + timedelta(minutes=i)).to_kafka()[1]
        for i in range(count)
    ]


def test_batch_is_inserted_per_partition(store: ViewStore) -> None:
    user = uuid.uuid4()
    batch = [SourceRecord("views", i % 2, i, None, v) for i, v in enumerate(_values(user, 4))]
    writer = RecordingWriter(store)
    poison = SourceRecord("views", 1, 9, None, b"{")
    result = store_batch([*batch, poison], writer, MAX_BYTES)
    assert result.stored == 4 and len(result.rejected) == 1
    # Partition 1 holds the poison: ClickHouse refuses its lines, and its records of the
    # canonical form are sent again without it.
    assert sorted(writer.inserts) == [("lines", "views-0-0-2"), ("lines", "views-1-1-9-canonical")]
    assert count_final(store, "views", user) == 4


def test_a_refused_partition_validates_only_its_records_of_another_form(store: ViewStore) -> None:
    user = uuid.uuid4()
    canonical, other = _values(user, 3), _values(user, 1)[0]
    spaced = orjson.dumps(orjson.loads(other), option=orjson.OPT_INDENT_2)  # valid, not canonical
    values = [canonical[0], spaced, canonical[1], b"[]", canonical[2]]
    writer = RecordingWriter(store)
    result = store_batch(
        [SourceRecord("views", 3, 10 + i, None, v) for i, v in enumerate(values)], writer, MAX_BYTES
    )
    assert result.stored == 4
    assert [(r.record.offset, r.reason) for r in result.rejected] == [
        (13, RejectReason.SCHEMA_VIOLATION)
    ]
    assert writer.inserts == [("lines", "views-3-10-14-canonical"), ("typed", "views-3-10-14-rest")]
    assert count_final(store, "views", user) == 4


def test_a_record_clickhouse_refuses_in_the_canonical_form_sends_the_partition_validated(
    store: ViewStore,
) -> None:
    # 30 February has the canonical form, but ClickHouse cannot parse it: the canonical records
    # are refused a second time, and the whole partition takes the validated path.
    user = uuid.uuid4()
    values = _values(user, 3)
    impossible = values[1].replace(b'"event_time":"2026-11-01', b'"event_time":"2026-02-30')
    values.append(impossible)
    writer = RecordingWriter(store)
    batch = [SourceRecord("views", 5, i, None, v) for i, v in enumerate(values)]
    result = store_batch(batch, writer, MAX_BYTES)
    assert result.stored == 3
    assert [(r.record.offset, r.reason) for r in result.rejected] == [
        (3, RejectReason.SCHEMA_VIOLATION)
    ]
    assert writer.inserts == [("typed", "views-5-0-3-validated")]
    assert count_final(store, "views", user) == 3
