"""Dead letters on the real broker: listed by reason with their origin, replayed once they pass
(with their own event_id, so twice is once), the others left where they are."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime

import pytest
from confluent_kafka.admin import AdminClient, ConfigResource, ResourceType
from localkafka import LocalKafka, end_offsets
from support import RunningSink, count_final, eventually, fresh_database, produce_raw, view_record

from clickhouse.store import ViewStore
from functions.settings import Settings
from functions.sink import replay
from functions.sink.replay import read_dead_letters, select

POISON_MARKER = "poison-body-5e1b"


def test_dead_letters_are_listed_and_the_ones_that_now_pass_are_replayed_once(
    settings: Settings,
    store: ViewStore,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    database = fresh_database(store)
    now = settings.model_copy(update={"clickhouse_database": database.database})
    # The sink ran with a record limit that was too tight: valid events over it were
    # dead-lettered as oversized. Today's limit (the default) takes them.
    tight = now.model_copy(update={"sink_max_record_bytes": 256})
    user = uuid.uuid4()
    moment = datetime(2026, 1, 1, tzinfo=UTC)
    events = [view_record(user, uuid.uuid4(), n, moment) for n in range(3)]
    padded = [(key, value + b" " * 300) for key, value in (e.to_kafka() for e in events)]
    poison = [(b"k", f'{{"{POISON_MARKER}": '.encode())]
    produce_raw(tight, [padded[0], *poison, padded[1], padded[2]])
    with RunningSink(tight, database) as sink:
        eventually(lambda: sink.consumer.records_dead_lettered == 4, what="the dead letters")
    assert count_final(database, "views", user) == 0

    letters = read_dead_letters(now)
    assert [(d.reason, d.origin.offset) for d in letters] == [
        ("oversized", 0),
        ("invalid_json", 1),
        ("oversized", 2),
        ("oversized", 3),
    ]
    assert {d.origin.topic for d in letters} == {now.views_topic}
    assert [d.offset for d in select(letters, offsets=(1, 2))] == [1, 2]
    assert len(select(letters, reason="invalid_json")) == 1

    monkeypatch.setattr(replay, "get_settings", lambda: now)
    assert replay.main(["list"]) == 0
    listed = capsys.readouterr().out
    assert "3  oversized" in listed and "1  invalid_json" in listed
    assert f"{now.views_topic}/0/1" in listed  # the origin topic/partition/offset
    assert POISON_MARKER not in listed  # another viewer's data only when asked
    assert replay.main(["list", "--bodies", "--reason", "invalid_json"]) == 0
    assert POISON_MARKER in capsys.readouterr().out

    views_end = end_offsets(now.kafka_bootstrap_servers, now.views_topic)
    assert replay.main(["replay", "--dry-run"]) == 0
    dry = capsys.readouterr().out
    assert "would replay 3 of 4" in dry and "still failing (invalid_json)" in dry
    assert end_offsets(now.kafka_bootstrap_servers, now.views_topic) == views_end

    for _ in range(2):  # replaying twice changes nothing
        assert replay.main(["replay"]) == 0
        assert "replayed 3 of 4" in capsys.readouterr().out
        with RunningSink(now, database) as sink:
            eventually(lambda: sink.consumer.records_stored == 3, what="the replayed records")
        assert count_final(database, "views", user) == 3
    stored = database.client.query(
        f"SELECT event_id FROM {database.database}.views FINAL WHERE user_id = {{u:UUID}}",
        parameters={"u": user},
    ).result_rows
    assert {row[0] for row in stored} == {e.event_id for e in events}  # their own event_ids
    assert len(read_dead_letters(now)) == 4  # the poison stays; nothing is deleted


def test_the_local_broker_keeps_dead_letters_30_days(kafka: LocalKafka) -> None:
    month = {"retention.ms": "2592000000"}  # as `make run` and k8s/infra/kafka/topics.yaml set it
    new, existing = f"dlq-new-{uuid.uuid4().hex[:8]}", f"dlq-old-{uuid.uuid4().hex[:8]}"
    kafka.create_topics({existing: 1})
    kafka.create_topics({new: 1, existing: 1}, {new: month, existing: month})
    admin = AdminClient({"bootstrap.servers": kafka.bootstrap_servers})
    for topic in (new, existing):
        (described,) = admin.describe_configs([ConfigResource(ResourceType.TOPIC, topic)]).values()
        assert described.result()["retention.ms"].value == month["retention.ms"], topic
