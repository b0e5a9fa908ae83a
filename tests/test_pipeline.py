"""HTTP -> Kafka -> sink -> ClickHouse -> HTTP, with the real broker and ClickHouse engine."""

from __future__ import annotations

import uuid
from collections.abc import Callable
from datetime import UTC, datetime, timedelta

import orjson
from starlette.testclient import TestClient
from support import (
    RunningSink,
    bearer,
    consume_all,
    count_final,
    eventually,
    produce_raw,
    produce_records,
    view_record,
)

from clickhouse.store import ViewStore
from functions.settings import Settings


def test_posted_view_is_readable_within_seconds(
    api: TestClient, settings: Settings, sink_factory: Callable[[Settings], RunningSink]
) -> None:
    user, movie = uuid.uuid4(), uuid.uuid4()
    with sink_factory(settings):
        posted = api.post(
            "/v1/views",
            json={"movie_id": str(movie), "movie_time_offset": 42_000},
            headers=bearer(user),
        )
        assert posted.status_code == 202

        def position() -> dict[str, object] | None:
            response = api.get(f"/v1/views/{movie}/position", headers=bearer(user))
            return response.json() if response.status_code == 200 else None

        found = eventually(position, timeout=15, what="the position to be readable")
    assert found["movie_id"] == str(movie)
    assert found["movie_time_offset"] == 42_000
    assert str(found["event_time"]).endswith("Z")


def test_latest_event_time_wins_and_redelivery_changes_nothing(
    api: TestClient,
    settings: Settings,
    store: ViewStore,
    sink_factory: Callable[[Settings], RunningSink],
) -> None:
    user, movie = uuid.uuid4(), uuid.uuid4()
    start = datetime(2026, 11, 20, 21, 0, tzinfo=UTC)
    latest = view_record(user, movie, 3_000, start + timedelta(seconds=30))
    # Arrival order: the middle one, the latest, then the earliest.
    produce_records(
        settings,
        [
            view_record(user, movie, 2_000, start + timedelta(seconds=10)),
            latest,
            view_record(user, movie, 1_000, start),
        ],
    )
    with sink_factory(settings) as sink:
        eventually(lambda: count_final(store, "views", user) == 3, what="3 rows in views")
        eventually(lambda: sink.consumer.batches_committed > 0, what="a commit")

    def read_position() -> dict[str, object]:
        response = api.get(f"/v1/views/{movie}/position", headers=bearer(user))
        assert response.status_code == 200
        return dict(response.json())

    assert read_position() == {
        "movie_id": str(movie),
        "movie_time_offset": 3_000,
        "event_time": "2026-11-20T21:00:30.000Z",
    }

    # The same batch again: a fresh consumer group reads the topic from the start.
    redelivery = settings.model_copy(update={"sink_group_id": f"again-{uuid.uuid4().hex[:8]}"})
    with sink_factory(redelivery) as sink:
        eventually(lambda: sink.consumer.records_stored >= 3, what="the batch redelivered")
    assert count_final(store, "views", user) == 3
    assert count_final(store, "latest_view", user) == 1
    assert read_position()["movie_time_offset"] == 3_000


def test_poison_goes_to_dead_letter_topic_and_does_not_stall_partition(
    settings: Settings, store: ViewStore, sink_factory: Callable[[Settings], RunningSink]
) -> None:
    user, movie = uuid.uuid4(), uuid.uuid4()
    before = view_record(user, movie, 1_000, datetime(2026, 11, 20, 21, 0, tzinfo=UTC))
    after = view_record(user, movie, 2_000, datetime(2026, 11, 20, 21, 1, tzinfo=UTC))
    schema_violation = before.model_dump(mode="json") | {"movie_time_offset": -5}
    produce_raw(
        settings,
        [
            before.to_kafka(),
            (str(user).encode(), b'{"event_id": "unterminated'),
            (str(user).encode(), orjson.dumps(schema_violation)),
            after.to_kafka(),
        ],
        partition=3,
    )
    with sink_factory(settings):
        eventually(lambda: count_final(store, "views", user) == 2, what="the valid records")
        dead = consume_all(settings.kafka_bootstrap_servers, settings.dlq_topic, 2)

    by_offset = {int(dict(m.headers())["dlq.origin.offset"]): m for m in dead}
    assert sorted(by_offset) == [1, 2]
    invalid_json, violation = by_offset[1], by_offset[2]
    for message in dead:
        headers = dict(message.headers())
        assert headers["dlq.origin.topic"] == settings.views_topic.encode()
        assert headers["dlq.origin.partition"] == b"3"
        assert headers["dlq.detail"]
        assert message.key() == str(user).encode()
    assert dict(invalid_json.headers())["dlq.reason"] == b"invalid_json"
    assert invalid_json.value() == b'{"event_id": "unterminated'
    assert dict(violation.headers())["dlq.reason"] == b"schema_violation"
    assert b"movie_time_offset" in dict(violation.headers())["dlq.detail"]
