"""Faults the pipeline must survive, each against the real broker and the real engine.

The promise checked throughout (``loadtest/reconcile.py``): every acknowledged event is in
``views FINAL`` exactly once, and ``latest_view`` holds each viewer's event with the latest
``event_time``. Tests wait on conditions (log lines, committed offsets), never on sleeps.
"""

from __future__ import annotations

import asyncio
import logging
import signal
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Iterator, Sequence
from pathlib import Path

import httpx
import orjson
import pytest
from confluent_kafka import KafkaError, KafkaException, Message, Producer
from localkafka import LocalKafka, committed_offsets, end_offsets, free_port, group_lag
from localsink import SinkProcess, environment, migrate, query_store
from reconcile import RAW_ROWS_SQL, Reconciliation, SentEvent, read_and_reconcile, synthetic_events
from starlette.exceptions import HTTPException
from starlette.testclient import TestClient
from support import (
    RunningSink,
    bearer,
    consume_all,
    eventually,
    fresh_database,
    ingest_client,
    repo_root,
    store_queries,
)

from clickhouse.store import ViewStore
from functions.events import ViewRecord
from functions.kafka_config import consumer_config
from functions.settings import Settings
from functions.sink.core import ViewsWriter
from functions.sink.faults import FAULT_POINT_REACHED, FaultInjectingWriter
from functions.sink.triggers.cloudevent import CloudEventSink

Position = tuple[int, int]  # (partition, offset)


def _produce(settings: Settings, items: list[tuple[bytes | None, bytes | None]]) -> list[Position]:
    """Write records to the views topic, spread by key; returns where each one landed."""
    positions: list[Position | None] = [None] * len(items)
    failures: list[KafkaError] = []
    producer = Producer(
        {"bootstrap.servers": settings.kafka_bootstrap_servers, "enable.idempotence": True}
    )
    for index, (key, value) in enumerate(items):

        def landed(err: KafkaError | None, msg: Message, index: int = index) -> None:
            if err is not None:
                failures.append(err)
            else:
                positions[index] = (msg.partition(), msg.offset())

        producer.produce(settings.views_topic, value=value, key=key, on_delivery=landed)
        producer.poll(0)
    assert producer.flush(30) == 0 and not failures, failures
    return [p for p in positions if p is not None]


def _produce_events(settings: Settings, events: list[SentEvent]) -> dict[uuid.UUID, Position]:
    positions = _produce(settings, [e.record().to_kafka() for e in events])
    return {event.event_id: position for event, position in zip(events, positions, strict=True)}


def _by_id(events: list[SentEvent]) -> dict[uuid.UUID, SentEvent]:
    return {event.event_id: event for event in events}


def _assert_promise_kept(result: Reconciliation, acknowledged: int) -> None:
    assert result.acknowledged == acknowledged
    assert (result.lost, result.duplicates_after_final, result.wrong_latest_positions) == (
        0,
        0,
        0,
    ), result
    assert result.found == acknowledged


def _caught_up(settings: Settings) -> bool:
    try:
        lag = group_lag(
            settings.kafka_bootstrap_servers, settings.sink_group_id, settings.views_topic
        )
    except KafkaException:  # e.g. no group coordinator yet after a broker restart
        return False
    return lag == 0


def _committed(settings: Settings) -> dict[int, int]:
    return committed_offsets(
        settings.kafka_bootstrap_servers, settings.sink_group_id, settings.views_topic
    )


# --- 1. Broker stopped and restarted during a load -----------------------------------------


class _PostingLoad:
    """Threads posting events through the ingest function, recording every answer."""

    def __init__(self, client: TestClient, events: list[SentEvent], threads: int = 4) -> None:
        self._client = client
        self._pending = iter(events)
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self.acknowledged: list[uuid.UUID] = []
        self.refused: list[tuple[int, float, dict[str, str]]] = []  # status, seconds, headers
        self._threads = [threading.Thread(target=self._post_until_stopped) for _ in range(threads)]

    def _post_until_stopped(self) -> None:
        while not self._stop.is_set():
            with self._lock:
                event = next(self._pending, None)
            if event is None:
                return
            body = {
                "movie_id": str(event.movie_id),
                "movie_time_offset": event.movie_time_offset,
                "event_time": event.event_time.isoformat(),
                "event_id": str(event.event_id),
            }
            started = time.monotonic()
            response = self._client.post("/v1/views", json=body, headers=bearer(event.user_id))
            with self._lock:
                if response.status_code == 202:
                    self.acknowledged.append(event.event_id)
                else:
                    elapsed = time.monotonic() - started
                    self.refused.append((response.status_code, elapsed, dict(response.headers)))

    def __enter__(self) -> _PostingLoad:
        for thread in self._threads:
            thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        for thread in self._threads:
            thread.join(timeout=60)


def test_broker_outage_is_503_in_bounded_time_and_acknowledged_events_all_arrive(
    tmp_path: Path, settings: Settings, store: ViewStore
) -> None:
    broker = LocalKafka(tmp_path / "kafka", free_port())
    broker.start()
    try:
        broker.create_topics({settings.views_topic: 6, settings.dlq_topic: 1})
        database = fresh_database(store)
        own = settings.model_copy(
            update={
                "kafka_bootstrap_servers": broker.bootstrap_servers,
                "kafka_delivery_timeout_ms": 1500,
                "clickhouse_database": database.database,
            }
        )
        events = synthetic_events(20_000, users=50, movies=20)
        with ingest_client(own, database) as client, _PostingLoad(client, events) as load:
            eventually(lambda: len(load.acknowledged) >= 30, what="acks before the outage")
            broker.stop()
            eventually(lambda: len(load.refused) >= 8, timeout=60, what="503s during the outage")
            broker.start()
            acked_at_restart = len(load.acknowledged)
            eventually(
                lambda: len(load.acknowledged) >= acked_at_restart + 30,
                timeout=90,
                what="acks after the restart",
            )
        assert load.refused
        for status, seconds, headers in load.refused:
            assert status == 503
            assert headers["retry-after"] == str(own.retry_after_seconds)
            assert headers["content-type"] == "application/problem+json"
            # delivery.timeout.ms is 1.5 s; the bound leaves room for a loaded machine.
            assert seconds < 10

        with RunningSink(own, database):
            eventually(lambda: _caught_up(own), timeout=60, what="the sink to catch up")
        result = read_and_reconcile(
            store_queries(database), database.database, _by_id(events), load.acknowledged
        )
        _assert_promise_kept(result, len(load.acknowledged))
    finally:
        broker.stop()


# --- 2. Sink killed with SIGKILL in the middle of a batch --------------------------------


@pytest.fixture
def sink_settings(settings: Settings, tmp_path: Path) -> Settings:
    """Settings of a sink child process, with an embedded ClickHouse directory of its own."""
    return settings.model_copy(
        update={
            "clickhouse_dsn": f"chdb://{tmp_path / 'sink-clickhouse'}",
            "sink_batch_max_records": 100,
        }
    )


def test_sink_killed_before_and_after_insert_redelivers_without_changing_final(
    sink_settings: Settings,
) -> None:
    env = environment(sink_settings)
    migrate(env)
    events = synthetic_events(600, users=30, movies=10)
    _produce_events(sink_settings, events)

    for fault_point in ("before_insert", "after_insert"):
        with SinkProcess({**env, "SINK_FAULT_POINT": fault_point}) as sink:
            frozen = sink.wait_for_message(FAULT_POINT_REACHED)
            assert frozen["fault_point"] == fault_point
            sink.kill()
        assert set(_committed(sink_settings).values()) == {0}, f"committed at {fault_point}"
        [[stored]] = query_store(env, RAW_ROWS_SQL.format(db=sink_settings.clickhouse_database))
        # The kill hit the window it aimed at: nothing inserted yet, or inserted, not committed.
        assert (stored["rows"] > 0) == (fault_point == "after_insert")

    with SinkProcess(env) as sink:
        eventually(lambda: _caught_up(sink_settings), timeout=90, what="the restarted sink")
        assert sink.terminate() == 0
    result = read_and_reconcile(
        lambda queries: query_store(env, *queries),
        sink_settings.clickhouse_database,
        _by_id(events),
        [e.event_id for e in events],
    )
    _assert_promise_kept(result, len(events))


class AttemptCountingWriter:
    """A writer that counts the inserts tried through it, successful or not."""

    def __init__(self, writer: ViewsWriter) -> None:
        self._writer = writer
        self.count = 0

    def insert_views(self, records: Sequence[ViewRecord], dedup_token: str) -> None:
        self.count += 1
        self._writer.insert_views(records, dedup_token)

    def insert_canonical_lines(self, lines: bytes, dedup_token: str) -> None:
        self.count += 1
        self._writer.insert_canonical_lines(lines, dedup_token)


# --- 3. ClickHouse refusing inserts -------------------------------------------------------


def test_refused_inserts_back_off_to_the_cap_commit_nothing_and_catch_up(
    settings: Settings, store: ViewStore, caplog: pytest.LogCaptureFixture
) -> None:
    database = fresh_database(store)
    writer = FaultInjectingWriter(database, fault_point=None)
    writer.refuse_inserts(True)  # the engine detaches views before the first insert
    attempts = AttemptCountingWriter(writer)
    own = settings.model_copy(
        update={
            "clickhouse_database": database.database,
            "sink_retry_initial_ms": 100,
            "sink_retry_max_ms": 400,
            # Several batches: the one read while a refused one was in flight is rewound too.
            "sink_batch_max_records": 50,
        }
    )
    events = synthetic_events(300, users=20, movies=5)
    _produce_events(own, events)

    def backoffs() -> list[float]:
        return [
            r.backoff_seconds  # type: ignore[attr-defined]
            for r in caplog.records
            if r.getMessage() == "batch not stored, redelivering after back-off"
        ]

    with RunningSink(own, attempts) as sink:
        eventually(lambda: len(backoffs()) >= 7, what="the back-off to reach its cap")
        assert backoffs()[:7] == [0.1, 0.2, 0.4, 0.4, 0.4, 0.4, 0.4]
        # Once an outage, when the retries reach the cap: an error (and so an error report).
        exhausted = [r for r in caplog.records if r.getMessage().startswith("batch still not")]
        assert [r.levelno for r in exhausted] == [logging.ERROR]
        # Each refused batch cost one insert, then a wait: no retry loop within a batch, no
        # spinning while backing off (the one after the last back-off may be under way).
        tried, refused = attempts.count, len(backoffs())
        assert refused - 1 <= tried <= refused + 1, (tried, refused)
        assert sink.consumer.batches_committed == 0
        assert set(_committed(own).values()) == {0}

        # The CloudEvent trigger on the same refusing engine answers 5xx, so KafkaSource retries.
        cloud_event = CloudEventSink(own, lambda: database)
        key, value = events[0].record().to_kafka()
        with pytest.raises(HTTPException) as refused:
            cloud_event.handle(
                {"id": "partition:0/offset:0", "source": f"x#{own.views_topic}", "key": key},
                value,
            )
        assert refused.value.status_code == 503

        writer.refuse_inserts(False)
        eventually(lambda: _caught_up(own), timeout=60, what="the catch-up")
    result = read_and_reconcile(
        store_queries(database), database.database, _by_id(events), [e.event_id for e in events]
    )
    _assert_promise_kept(result, len(events))


# --- 4. Rebalance ------------------------------------------------------------------------


class _Ownership(logging.Handler):
    """Replays a sink thread's 'partitions assigned/revoked' logs into what it owns."""

    def __init__(self, thread_name: str) -> None:
        super().__init__()
        self._thread_name = thread_name
        self.owned: set[int] = set()
        self.revocations: list[tuple[set[int], set[int]]] = []  # (owned before, revoked)

    def emit(self, record: logging.LogRecord) -> None:
        if record.threadName != self._thread_name:
            return
        partitions = set(getattr(record, "partitions", ()))
        if record.getMessage() == "partitions assigned":
            self.owned |= partitions
        elif record.getMessage() == "partitions revoked":
            self.revocations.append((set(self.owned), partitions))
            self.owned -= partitions


def test_rebalance_between_two_sinks_loses_nothing_and_duplicates_collapse(
    settings: Settings, store: ViewStore
) -> None:
    assert consumer_config(settings)["partition.assignment.strategy"] == "cooperative-sticky"
    database = fresh_database(store)
    own = settings.model_copy(
        update={"clickhouse_database": database.database, "sink_batch_max_records": 50}
    )
    events = synthetic_events(50_000, users=60, movies=10)
    produced: list[SentEvent] = []
    stop_producing = threading.Event()

    def produce_stream() -> None:
        chunks = iter(events[i : i + 25] for i in range(0, len(events), 25))
        while not stop_producing.is_set() and (chunk := next(chunks, None)):
            _produce_events(own, chunk)
            produced.extend(chunk)

    ownership = _Ownership("sink-a")
    logger = logging.getLogger("functions.sink.triggers.consumer")
    logger.addHandler(ownership)
    logger.setLevel(logging.INFO)
    producer = threading.Thread(target=produce_stream)
    producer.start()
    try:
        with RunningSink(own, database, name="sink-a") as a:
            with RunningSink(own, database, name="sink-b") as b:
                eventually(lambda: b.consumer.records_stored > 0, timeout=60, what="b storing")
            stored_by_a = a.consumer.records_stored
            eventually(lambda: ownership.owned == set(range(6)), what="a taking b's partitions")
            eventually(lambda: a.consumer.records_stored > stored_by_a, what="a going on")
            revocations_before_b2 = len(ownership.revocations)
            with RunningSink(own, database, name="sink-b2") as b2:
                eventually(lambda: b2.consumer.records_stored > 0, timeout=60, what="b2 storing")
                stop_producing.set()
                producer.join()
                eventually(lambda: _caught_up(own), timeout=60, what="the catch-up")
    finally:
        stop_producing.set()
        producer.join()
        logger.removeHandler(ownership)
        logger.setLevel(logging.NOTSET)

    # Cooperative-sticky: when b2 joined, a gave up only the partitions that moved to b2.
    owned_before, revoked = ownership.revocations[revocations_before_b2]
    assert owned_before == set(range(6)) and revoked and revoked < owned_before
    result = read_and_reconcile(
        store_queries(database), database.database, _by_id(produced), [e.event_id for e in produced]
    )
    _assert_promise_kept(result, len(produced))


# --- 5. Poison records mixed into a load -------------------------------------------------


def test_poison_in_a_load_is_dead_lettered_with_reason_and_origin_and_nothing_stalls(
    settings: Settings, store: ViewStore
) -> None:
    database = fresh_database(store)
    own = settings.model_copy(
        update={"clickhouse_database": database.database, "sink_batch_max_records": 200}
    )
    events = synthetic_events(1500, users=40, movies=10)
    valid_json_bad_event = events[0].record().model_dump(mode="json") | {"movie_time_offset": -1}
    poison = {
        "invalid_json": b'{"event_id": "unterminated',
        "schema_violation": orjson.dumps(valid_json_bad_event),
        "oversized": b'{"padding": "' + b"x" * (own.sink_max_record_bytes + 1) + b'"}',
        "empty": b"",
    }
    items: list[tuple[bytes | None, bytes | None]] = [e.record().to_kafka() for e in events[1:]]
    # Each kind of poison three times, spread over the load and over partitions by their keys.
    kinds = [kind for kind in poison for _ in range(3)]
    for n, kind in enumerate(kinds):
        items.insert((n + 1) * len(items) // (len(kinds) + 1), (uuid.uuid4().bytes, poison[kind]))
    positions = _produce(own, items)
    poison_at = {
        positions[i]: kind
        for i, (_key, value) in enumerate(items)
        for kind, body in poison.items()
        if value == body
    }
    assert len(poison_at) == len(kinds)

    with RunningSink(own, database):
        eventually(lambda: _caught_up(own), timeout=60, what="every partition to be committed")
    dead = consume_all(own.kafka_bootstrap_servers, own.dlq_topic, len(kinds))
    for message in dead:
        headers = dict(message.headers() or [])
        origin = (int(headers["dlq.origin.partition"]), int(headers["dlq.origin.offset"]))
        assert headers["dlq.origin.topic"] == own.views_topic.encode()
        assert headers["dlq.reason"].decode() == poison_at.pop(origin)
        assert headers["dlq.detail"]
    assert not poison_at, f"not dead-lettered: {poison_at}"
    result = read_and_reconcile(
        store_queries(database),
        database.database,
        _by_id(events[1:]),
        [e.event_id for e in events[1:]],
    )
    _assert_promise_kept(result, len(events) - 1)


def test_dead_letter_topic_missing_commits_nothing_past_poison_and_catches_up(
    settings: Settings, store: ViewStore, kafka: LocalKafka, caplog: pytest.LogCaptureFixture
) -> None:
    # The dead-letter topic does not exist yet (the broker creates no topics): each batch with
    # poison fails after the delivery timeout, while the next batch is already being stored.
    database = fresh_database(store)
    own = settings.model_copy(
        update={
            "clickhouse_database": database.database,
            "dlq_topic": f"{settings.views_topic}.dlq-later",
            "kafka_delivery_timeout_ms": 500,
            "sink_retry_initial_ms": 100,
            "sink_retry_max_ms": 400,
            "sink_batch_max_records": 50,
        }
    )
    events = synthetic_events(600, users=30, movies=5)
    items: list[tuple[bytes | None, bytes | None]] = [e.record().to_kafka() for e in events]
    for n in range(1, 4):
        items.insert(n * len(items) // 4, (uuid.uuid4().bytes, b"not a view"))
    positions = _produce(own, items)
    poison_at = {positions[i] for i, (_key, value) in enumerate(items) if value == b"not a view"}

    def dead_letter_failures() -> int:
        return sum(
            1
            for r in caplog.records
            if r.getMessage() == "batch not stored, redelivering after back-off"
            and "dead-letter" in r.error["message"]  # type: ignore[attr-defined]
        )

    with RunningSink(own, database):
        eventually(lambda: dead_letter_failures() >= 3, what="failed dead-letter writes")
        committed = _committed(own)
        for partition, offset in poison_at:
            assert committed.get(partition, 0) <= offset, "committed past an unwritten poison"
        kafka.create_topics({own.dlq_topic: 1})
        eventually(lambda: _caught_up(own), timeout=60, what="the catch-up")
    dead = consume_all(own.kafka_bootstrap_servers, own.dlq_topic, len(poison_at))
    origins = {
        (int(h["dlq.origin.partition"]), int(h["dlq.origin.offset"]))
        for h in (dict(message.headers() or []) for message in dead)
    }
    assert origins == poison_at
    result = read_and_reconcile(
        store_queries(database), database.database, _by_id(events), [e.event_id for e in events]
    )
    _assert_promise_kept(result, len(events))


# --- 6. Graceful shutdown -----------------------------------------------------------------


@pytest.fixture
def ingest_server(
    settings: Settings, tmp_path: Path
) -> Iterator[tuple[subprocess.Popen[bytes], str]]:
    """The ingest function served by functions-framework (gunicorn + uvicorn) as deployed."""
    port = free_port()
    env = environment(settings.model_copy(update={"clickhouse_dsn": f"chdb://{tmp_path / 'ch'}"}))
    with (tmp_path / "ingest.log").open("wb") as log:
        server = subprocess.Popen(
            [
                *(sys.executable, "-m", "functions_framework", "--target", "ingest", "--asgi"),
                *("--source", str(repo_root() / "functions" / "main.py")),
                *("--host", "127.0.0.1", "--port", str(port)),
            ],
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
        )
    base_url = f"http://127.0.0.1:{port}"

    def healthy() -> bool:
        try:
            return httpx.get(f"{base_url}/healthz").status_code == 200
        except httpx.TransportError:
            return False

    try:
        eventually(healthy, timeout=60, what="the ingest server")
        yield server, base_url
    finally:
        if server.poll() is None:
            server.kill()
            server.wait()


async def _post_through_shutdown(
    server: subprocess.Popen[bytes], base_url: str, events: list[SentEvent]
) -> tuple[list[uuid.UUID], list[str]]:
    """Post concurrently; SIGTERM the server once some are acked; post on until it is gone."""
    acknowledged: list[uuid.UUID] = []
    errors: list[str] = []
    pending = iter(events)
    tokens: dict[uuid.UUID, dict[str, str]] = {}
    server_gone = asyncio.Event()
    enough_acknowledged = asyncio.Event()

    async def poster(client: httpx.AsyncClient) -> None:
        while not server_gone.is_set() and (event := next(pending, None)):
            headers = tokens.setdefault(event.user_id, bearer(event.user_id))
            body = {"movie_id": str(event.movie_id), "event_id": str(event.event_id)}
            try:
                response = await client.post(
                    "/v1/views", json=body | {"movie_time_offset": 1}, headers=headers
                )
            except httpx.TransportError as exc:
                errors.append(type(exc).__name__)
                await asyncio.sleep(0.05)
                continue
            if response.status_code == 202:
                acknowledged.append(event.event_id)
                if len(acknowledged) >= 200:
                    enough_acknowledged.set()
            else:
                errors.append(str(response.status_code))

    async with httpx.AsyncClient(base_url=base_url, timeout=30) as client:
        posters = [asyncio.create_task(poster(client)) for _ in range(16)]
        await enough_acknowledged.wait()
        server.send_signal(signal.SIGTERM)
        await asyncio.to_thread(server.wait)
        server_gone.set()
        await asyncio.gather(*posters)
    return acknowledged, errors


def test_sigterm_to_ingest_answers_each_request_and_every_2xx_is_in_kafka(
    ingest_server: tuple[subprocess.Popen[bytes], str], settings: Settings
) -> None:
    server, base_url = ingest_server
    events = synthetic_events(30_000, users=100, movies=10)
    acknowledged, errors = asyncio.run(
        asyncio.wait_for(_post_through_shutdown(server, base_url, events), timeout=120)
    )
    assert server.returncode == 0
    assert len(acknowledged) >= 200, errors
    in_topic = sum(end_offsets(settings.kafka_bootstrap_servers, settings.views_topic).values())
    in_kafka = {
        orjson.loads(m.value())["event_id"]
        for m in consume_all(settings.kafka_bootstrap_servers, settings.views_topic, in_topic)
    }
    assert {str(event_id) for event_id in acknowledged} <= in_kafka


def _all_stored_below_commits(
    env: dict[str, str], settings: Settings, positions: dict[uuid.UUID, Position]
) -> tuple[int, int]:
    """(records below the committed offsets, how many of them are not in ClickHouse)."""
    committed = _committed(settings)
    [rows] = query_store(
        env, f"SELECT toString(event_id) AS event_id FROM {settings.clickhouse_database}.views"
    )
    stored = {uuid.UUID(row["event_id"]) for row in rows}
    below = [eid for eid, (p, offset) in positions.items() if offset < committed.get(p, 0)]
    return len(below), len(set(below) - stored)


def test_sigterm_to_sink_mid_stream_commits_only_inserted_records(
    sink_settings: Settings,
) -> None:
    env = environment(sink_settings)
    migrate(env)
    events = synthetic_events(5000, users=50, movies=10)
    positions = _produce_events(sink_settings, events)
    with SinkProcess(env) as sink:
        sink.wait_for_message("batch committed")
        assert sink.terminate() == 0
        stopped = sink.wait_for_message("sink stopped", timeout=1)
    committed_count, missing = _all_stored_below_commits(env, sink_settings, positions)
    assert committed_count == stopped["records_stored"] > 0
    assert missing == 0


def test_sigterm_to_sink_while_clickhouse_refuses_abandons_the_batch_uncommitted(
    sink_settings: Settings,
) -> None:
    env = environment(sink_settings) | {"SINK_FAULT_SIGNALS": "true"}
    migrate(env)
    with SinkProcess(env) as sink:
        sink.wait_for_message("partitions assigned")
        sink.send(signal.SIGUSR1)
        positions = _produce_events(sink_settings, synthetic_events(500, users=20, movies=5))
        sink.wait_for_message("batch not stored, redelivering after back-off")
        assert sink.terminate() == 0
        assert sink.wait_for_message("sink stopped", timeout=1)["batches_committed"] == 0
    assert set(_committed(sink_settings).values()) == {0}
    assert _all_stored_below_commits(env, sink_settings, positions) == (0, 0)
