"""The sink's fast path: a partition validated at once and inserted as raw JSON documents."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta, timezone

import orjson
from support import view_record

from functions.sink.core import RejectReason, SourceRecord, store_batch
from functions.store import ViewStore

MAX_BYTES = 1024


def _records(values: list[bytes]) -> list[SourceRecord]:
    return [SourceRecord("views", 0, i, None, v) for i, v in enumerate(values)]


def test_values_cannot_combine_into_valid_events_across_records(store: ViewStore) -> None:
    user, movie = uuid.uuid4(), uuid.uuid4()
    moment = datetime(2026, 11, 3, tzinfo=UTC)
    one, two = (view_record(user, movie, i, moment).to_kafka()[1] for i in range(2))
    # Two records that are each broken, but joined by a comma form one valid event; and one
    # record holding two events: together as many array elements as records.
    halves = (one[: one.index(b',"movie_id"')], one[one.index(b',"movie_id"') + 1 :])
    result = store_batch(_records([halves[0], halves[1], one + b"," + two]), store, MAX_BYTES)
    assert result.stored == 0
    assert [r.reason for r in result.rejected] == [RejectReason.INVALID_JSON] * 3


def test_raw_documents_store_what_the_typed_path_stores(store: ViewStore) -> None:
    user, movie = uuid.uuid4(), uuid.uuid4()
    paris = timezone(timedelta(hours=1))
    moment = datetime(2026, 11, 3, 12, 30, 15, 123456, tzinfo=paris)
    record = view_record(user, movie, 42, moment)
    document = orjson.loads(record.to_kafka()[1])
    document["event_time"] = moment.isoformat()  # an offset, not Z: still the same instant
    result = store_batch(_records([orjson.dumps(document)]), store, MAX_BYTES)
    assert result.stored == 1 and not result.rejected
    ((event_id, event_time, offset),) = store.client.query(
        f"SELECT event_id, event_time, movie_time_offset FROM {store.database}.views"
        " WHERE user_id = {u:UUID}",
        parameters={"u": user},
    ).result_rows
    assert event_id == record.event_id and offset == 42
    assert event_time.replace(tzinfo=UTC) == datetime(2026, 11, 3, 11, 30, 15, 123000, tzinfo=UTC)
