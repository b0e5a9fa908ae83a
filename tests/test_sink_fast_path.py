"""The sink's fast path: ClickHouse checks and parses records given as lines.

What it stores must be what the validated path (pydantic, typed columns) stores, and it must
refuse every line the model refuses: the model stays the one definition of a valid record.
"""

from __future__ import annotations

import re
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta, timezone
from typing import Any

import orjson
import pytest
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st
from pydantic import ValidationError
from support import repo_root, view_record

from clickhouse.migrate import apply_migrations
from functions.errors import StoreUnavailable
from functions.events import MAX_MOVIE_TIME_OFFSET_MS, ViewRecord
from functions.sink.core import CANONICAL_RECORD_PATTERN, RejectReason, SourceRecord, store_batch
from functions.store import ViewStore

MAX_BYTES = 1024


def examples(count: int) -> Any:
    return settings(max_examples=count, deadline=None, suppress_health_check=[HealthCheck.too_slow])


storable_times = st.datetimes(
    min_value=datetime(1970, 1, 1),
    max_value=datetime(2199, 12, 31, 23, 59, 59, 999_999),
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
    except StoreUnavailable:
        # Refused: the sink validates it itself, whatever the model says.
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
    result = store_batch(_records(values), store, MAX_BYTES)
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
    result = store_batch(_records([spaced]), store, MAX_BYTES)
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
    result = store_batch(_records([value]), store, max_record_bytes=len(value) - 1)
    assert result.stored == 0
    assert [r.reason for r in result.rejected] == [RejectReason.OVERSIZED]


def test_the_sinks_canonical_pattern_is_the_one_clickhouse_checks() -> None:
    # The sink sorts a refused partition's records with its copy of the pattern; a copy that
    # drifted would only cost speed, but equal is simplest to reason about.
    migration = (repo_root() / "clickhouse/migrations/0003_canonical_view_lines.sql").read_text()
    concat = migration[migration.index("match(line, concat(") : migration.index("$'))") + 2]
    assert "".join(re.findall(r"'([^']*)'", concat)) == CANONICAL_RECORD_PATTERN
