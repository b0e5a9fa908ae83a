"""The Kafka side is as strict as the HTTP side: the sink dead-letters what the schema forbids."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime
from typing import Any

import orjson
import pytest
from support import view_record

from functions.sink.batch import SourceRecord
from functions.sink.core import Rejected, RejectReason, classify


def _value(**changes: Any) -> bytes:
    record = view_record(uuid.uuid4(), uuid.uuid4(), 1000, datetime(2026, 5, 1, tzinfo=UTC))
    document = orjson.loads(record.to_kafka()[1])
    document.update(changes)
    return orjson.dumps({name: value for name, value in document.items() if value is not None})


def test_a_produced_record_passes() -> None:
    assert not isinstance(classify(SourceRecord("views", 0, 0, None, _value()), 65_536), Rejected)


@pytest.mark.parametrize(
    ("changes", "field"),
    [
        ({"movie_time_offset": "1000"}, "movie_time_offset"),
        ({"movie_time_offset": -1}, "movie_time_offset"),
        ({"movie_time_offset": 48 * 3600 * 1000 + 1}, "movie_time_offset"),
        ({"user_id": uuid.uuid4().hex}, "user_id"),
        ({"event_id": None}, "event_id"),
        ({"event_time": "2026-05-01T00:00:00"}, "event_time"),
        ({"event_time": "2300-01-01T00:00:00Z"}, "event_time"),
        ({"received_at": "1969-12-31T23:59:59Z"}, "received_at"),
        ({"schema_version": 2}, "schema_version"),
        ({"extra": True}, "extra"),
    ],
)
def test_schema_violations_go_to_the_dead_letter_topic(changes: dict[str, Any], field: str) -> None:
    outcome = classify(SourceRecord("views", 0, 0, None, _value(**changes)), 65_536)
    assert isinstance(outcome, Rejected)
    assert outcome.reason is RejectReason.SCHEMA_VIOLATION
    assert outcome.detail.startswith(f"{field}:")
