"""The sink core: classification of records (pure), idempotent batch inserts, and the fast path
(real engine).

What the fast path (ClickHouse checks and parses records given as lines) stores must be what the
validated path (pydantic, typed columns) stores, and it must refuse every line the model refuses:
the model stays the one definition of a valid record.
"""

from __future__ import annotations

import re
import uuid
from collections.abc import Iterator, Sequence
from datetime import UTC, datetime, timedelta, timezone
from typing import Any

import orjson
import pytest
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st
from pydantic import ValidationError
from support import count_final, repo_root, view_record

from clickhouse import queries
from clickhouse.canonical import CANONICAL_RECORD_PATTERN
from clickhouse.migrate import apply_migrations
from clickhouse.store import ViewStore
from functions.errors import RecordsRefused, StoreUnavailable
from functions.events import MAX_MOVIE_TIME_OFFSET_MS, ViewRecord
from functions.sink.batch import Batch, SourceRecord, rewind_positions
from functions.sink.core import Rejected, RejectReason, classify, store_batch

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
    store_batch(Batch(batch), store, MAX_BYTES)
    # A different range (so a different dedup token): only the table engine can collapse it.
    store_batch(Batch(batch[1:]), store, MAX_BYTES)
    store_batch(Batch(batch), store, MAX_BYTES)
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


class CountingWriter(RecordingWriter):
    """The store, counting every insert attempted, successful or not."""

    def __init__(self, store: ViewStore) -> None:
        super().__init__(store)
        self.attempts = 0

    def insert_views(self, records: Sequence[ViewRecord], dedup_token: str) -> None:
        self.attempts += 1
        super().insert_views(records, dedup_token)

    def insert_canonical_lines(self, lines: bytes, dedup_token: str) -> None:
        self.attempts += 1
        super().insert_canonical_lines(lines, dedup_token)


@pytest.fixture
def detached(store: ViewStore) -> Iterator[ViewStore]:
    """The store while its views table is detached: ClickHouse refuses every insert."""
    store.command(queries.DETACH_VIEWS)
    try:
        yield store
    finally:
        store.command(queries.ATTACH_VIEWS)


@pytest.mark.parametrize("with_poison", [False, True])
def test_an_unavailable_clickhouse_is_told_from_poison_at_the_first_insert(
    detached: ViewStore, with_poison: bool
) -> None:
    # Two partitions, one perhaps with poison: while ClickHouse cannot take inserts, the batch
    # fails at its first insert, not after the fast, the split and the validated path of each.
    values = _values(uuid.uuid4(), 4)
    records = [SourceRecord("views", i % 2, i, None, v) for i, v in enumerate(values)]
    if with_poison:
        records.append(SourceRecord("views", 1, 9, None, b"{"))
    writer = CountingWriter(detached)
    with pytest.raises(StoreUnavailable):
        store_batch(Batch(records), writer, MAX_BYTES)
    assert writer.attempts == 1
    assert writer.inserts == []


def test_a_batch_owns_its_partitions_offsets_and_rewind_positions() -> None:
    records = [
        SourceRecord("views", 0, 10, None, b"a"),
        SourceRecord("views", 0, 11, None, b"b"),
        SourceRecord("views", 2, 7, None, b"c"),
        SourceRecord("views", 0, 12, None, b"d"),  # a later run of partition 0
    ]
    batch = Batch(records)
    assert len(batch) == 4
    assert [(tp, [r.offset for r in run]) for tp, run in batch.partitions()] == [
        (("views", 0), [10, 11, 12]),
        (("views", 2), [7]),
    ]
    assert batch.offset_range(("views", 0)) == (10, 12)
    assert batch.offset_range(("views", 2)) == (7, 7)
    assert batch.commit_offsets() == {("views", 0): 13, ("views", 2): 8}
    assert batch.rewind_positions() == {("views", 0): 10, ("views", 2): 7}
    assert batch.dedup_token(("views", 0)) == "views-0-10-12"
    later = Batch([SourceRecord("views", 2, 8, None, b"e"), SourceRecord("views", 5, 0, None, b"")])
    assert rewind_positions([batch, later]) == {("views", 0): 10, ("views", 2): 7, ("views", 5): 0}


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
    result = store_batch(Batch([*batch, poison]), writer, MAX_BYTES)
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
        Batch([SourceRecord("views", 3, 10 + i, None, v) for i, v in enumerate(values)]),
        writer,
        MAX_BYTES,
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
    result = store_batch(Batch(batch), writer, MAX_BYTES)
    assert result.stored == 3
    assert [(r.record.offset, r.reason) for r in result.rejected] == [
        (3, RejectReason.SCHEMA_VIOLATION)
    ]
    assert writer.inserts == [("typed", "views-5-0-3-validated")]
    assert count_final(store, "views", user) == 3


def examples(count: int) -> Any:
    return settings(max_examples=count, deadline=None, suppress_health_check=[HealthCheck.too_slow])


# Local times a day inside the storable span: with the offsets below, the instant stays in it (a
# +05:00 midnight of 1 January 1970 is in 1969).
storable_times = st.datetimes(
    min_value=datetime(1970, 1, 2),
    max_value=datetime(2199, 12, 30, 23, 59, 59, 999_999),
    timezones=st.sampled_from([UTC, timezone(timedelta(hours=-7)), timezone(timedelta(hours=5))]),
)
view_records = st.builds(
    ViewRecord.from_request,
    # A fresh random viewer each: the rows of one example are found by their user ids.
    user_id=st.builds(uuid.uuid4),
    movie_id=st.uuids(),
    movie_time_offset=st.integers(0, MAX_MOVIE_TIME_OFFSET_MS),
    received_at=storable_times.map(lambda t: t.astimezone(UTC)),  # the ingest function's clock
    event_time=storable_times,
    event_id=st.uuids(),
)


@pytest.fixture(scope="module")
def typed(store: ViewStore) -> Iterator[ViewStore]:
    """A second database, filled through the validated path only."""
    database = f"typed_{uuid.uuid4().hex[:8]}"
    apply_migrations(store.client, database)
    yield ViewStore(store.client, database, embedded=True)
    store.client.command(f"DROP DATABASE {database}")


def _rows(store: ViewStore, records: list[ViewRecord]) -> list[tuple[Any, ...]]:
    rows = store.client.query(
        "SELECT user_id, event_id, movie_id, movie_time_offset, event_time, received_at"
        f" FROM {store.database}.views WHERE has({{users:Array(UUID)}}, user_id)"
        " ORDER BY user_id, event_id",
        parameters={"users": [record.user_id for record in records]},
    ).result_rows
    return [(*row[:4], *(t.replace(tzinfo=UTC) for t in row[4:])) for row in rows]


def _lines(records: list[ViewRecord]) -> bytes:
    return b"\n".join(record.to_kafka()[1] for record in records)


@examples(100)  # each event time is its own month partition: inserts of many are slow
@given(records=st.lists(view_records, min_size=1, max_size=5))
def test_fast_path_stores_what_the_validated_path_stores(
    store: ViewStore, typed: ViewStore, records: list[ViewRecord]
) -> None:
    token = uuid.uuid4().hex
    store.insert_canonical_lines(_lines(records), token)
    typed.insert_views(records, token)
    stored = _rows(store, records)
    assert len(stored) == len(records)
    assert stored == _rows(typed, records)


TRICKY_VALUES = {
    "schema_version": ["2", "0", '"1"', "1.0", "true"],
    "event_id": [
        '"00000000-0000-0000-0000-000000000000"',
        '"FFFFFFFF-FFFF-FFFF-FFFF-FFFFFFFFFFFF"',
        '"6f9619ff8b86d011b42d00c04fc964ff"',
        '"{6f9619ff-8b86-d011-b42d-00c04fc964ff}"',
        '"6f9619ff-8b86-d011-b42d-00c04fc964f"',
        "null",
    ],
    "movie_time_offset": [
        "0",
        "172800000",
        "172800001",
        "999999999",
        "1728000000",
        "-1",
        "01",
        "1.0",
        "1e3",
        '"5"',
        "null",
    ],
    "event_time": [
        '"2024-02-29T00:00:00Z"',
        '"2027-02-29T00:00:00Z"',
        '"2026-04-31T12:00:00Z"',
        '"2026-13-01T00:00:00Z"',
        '"1970-01-01T00:00:00Z"',
        '"1969-12-31T23:59:59.999999Z"',
        '"2199-12-31T23:59:59.999999Z"',
        '"2200-01-01T00:00:00Z"',
        '"2026-01-01T24:00:00Z"',
        '"2026-01-01T23:59:60Z"',
        '"2026-01-01T00:00:00.1234567Z"',
        '"2026-01-01T00:00:00.Z"',
        '"2026-01-01T00:00:00+00:00"',
        '"2026-01-01T00:00:00+01:00"',
        '"2026-01-01T00:00:00"',
        '"2026-01-01 00:00:00Z"',
        '"2026-01-01T00:00:00z"',
        '"2026-1-01T00:00:00Z"',
        '"1767225600"',
        "1767225600",
    ],
}
mutations = st.one_of(
    st.tuples(st.just("replace"), st.integers(0, 300), st.characters(codec="ascii")),
    st.tuples(st.just("insert"), st.integers(0, 300), st.characters(codec="ascii")),
    st.tuples(st.just("delete"), st.integers(0, 300), st.just("")),
    st.tuples(st.just("field"), st.sampled_from(sorted(TRICKY_VALUES)), st.integers(0, 30)),
)


def _mutate(line: str, mutation: tuple[str, Any, Any]) -> str:
    kind, where, what = mutation
    if kind == "field":
        document = orjson.loads(line)
        choices = TRICKY_VALUES[where]
        head, _, _ = line.partition(f'"{where}":')
        rest = line[len(head) + len(where) + 3 :]
        old_value = orjson.dumps(document[where]).decode()
        return f'{head}"{where}":{choices[what % len(choices)]}{rest[len(old_value) :]}'
    position = where % (len(line) + 1)
    if kind == "replace":
        return line[:position] + what + line[position + 1 :]
    if kind == "insert":
        return line[:position] + what + line[position:]
    return line[:position] + line[position + 1 :]


def _model_accepts(line: str) -> ViewRecord | None:
    try:
        return ViewRecord.model_validate_json(line)
    except ValidationError:
        return None


@examples(300)
@given(record=view_records, mutation=mutations)
def test_clickhouse_accepts_no_line_the_model_refuses(
    store: ViewStore, typed: ViewStore, record: ViewRecord, mutation: tuple[str, Any, Any]
) -> None:
    line = _mutate(record.to_kafka()[1].decode(), mutation)
    expected = _model_accepts(line)
    token = uuid.uuid4().hex
    try:
        store.insert_canonical_lines(line.encode(), token)
    except RecordsRefused:
        # Refused (never "unavailable": that would stall the partition): the sink validates it
        # itself, whatever the model says.
        event(f"refused; the model {'accepts' if expected else 'refuses'} it")
        return
    event("stored")
    assert expected is not None, f"ClickHouse stored a line the model refuses: {line!r}"
    typed.insert_views([expected], token)
    assert _rows(store, [expected]) == _rows(typed, [expected])


def _records(values: list[bytes | None]) -> list[SourceRecord]:
    return [SourceRecord("views", 0, i, None, v) for i, v in enumerate(values)]


def test_values_cannot_combine_into_valid_events_across_records(store: ViewStore) -> None:
    user, movie = uuid.uuid4(), uuid.uuid4()
    moment = datetime(2026, 11, 3, tzinfo=UTC)
    one, two = (view_record(user, movie, i, moment).to_kafka()[1] for i in range(2))
    # Two records that are each broken but together a valid event; a record holding two
    # events on two lines; and an empty record, which would be an empty line.
    cut = one.index(b',"movie_id"')
    values = [one[:cut], one[cut + 1 :], one + b"\n" + two, b"", None]
    result = store_batch(Batch(_records(values)), store, MAX_BYTES)
    assert result.stored == 0
    assert [r.reason for r in result.rejected] == [RejectReason.INVALID_JSON] * 3 + [
        RejectReason.EMPTY
    ] * 2


def test_another_spelling_of_a_valid_record_is_stored_through_the_validated_path(
    store: ViewStore,
) -> None:
    user, movie = uuid.uuid4(), uuid.uuid4()
    paris = timezone(timedelta(hours=1))
    moment = datetime(2026, 11, 3, 12, 30, 15, 123456, tzinfo=paris)
    record = view_record(user, movie, 42, moment)
    document = orjson.loads(record.to_kafka()[1])
    document["event_time"] = moment.isoformat()  # an offset, not Z: still the same instant
    spaced = orjson.dumps(document, option=orjson.OPT_INDENT_2)
    result = store_batch(Batch(_records([spaced])), store, MAX_BYTES)
    assert result.stored == 1 and not result.rejected
    ((event_id, event_time, offset),) = store.client.query(
        f"SELECT event_id, event_time, movie_time_offset FROM {store.database}.views"
        " WHERE user_id = {u:UUID}",
        parameters={"u": user},
    ).result_rows
    assert event_id == record.event_id and offset == 42
    assert event_time.replace(tzinfo=UTC) == datetime(2026, 11, 3, 11, 30, 15, 123000, tzinfo=UTC)


def test_record_size_limit_holds_on_the_fast_path(store: ViewStore) -> None:
    moment = datetime(2026, 11, 3, tzinfo=UTC)
    value = view_record(uuid.uuid4(), uuid.uuid4(), 1, moment).to_kafka()[1]
    result = store_batch(Batch(_records([value])), store, max_record_bytes=len(value) - 1)
    assert result.stored == 0
    assert [r.reason for r in result.rejected] == [RejectReason.OVERSIZED]


def test_the_canonical_pattern_of_clickhouse_is_the_one_migration_0003_checks() -> None:
    # The sink sorts a refused partition's records with its copy of the pattern; a copy that
    # drifted would only cost speed, but equal is simplest to reason about.
    migration = (repo_root() / "clickhouse/migrations/0003_canonical_view_lines.sql").read_text()
    concat = migration[migration.index("match(line, concat(") : migration.index("$'))") + 2]
    assert "".join(re.findall(r"'([^']*)'", concat)) == CANONICAL_RECORD_PATTERN
