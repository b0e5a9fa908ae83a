"""Helpers of the test suite: tokens, the ingest app, a running sink, Kafka I/O, polling."""

from __future__ import annotations

import contextlib
import importlib
import os
import signal
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from types import ModuleType
from typing import Any, TypeVar

import httpx
import jwt
import orjson
import pytest
import uvicorn
from confluent_kafka import Message, Producer
from localkafka import LocalKafka, free_port, read_records
from starlette.testclient import TestClient

from clickhouse.migrate import apply_migrations
from clickhouse.store import ViewStore
from functions.auth import DEV_PERMISSIONS
from functions.events import ViewRecord
from functions.http.app import IngestApi
from functions.producer import AsyncProducer
from functions.settings import Settings, get_settings
from functions.sink.core import ViewsWriter
from functions.sink.triggers.consumer import BatchConsumer

JWT_SECRET = "test-secret-that-is-long-enough-for-hs256"
TEST_DATABASE = "movies_test"
T = TypeVar("T")


def make_token(
    subject: uuid.UUID | str,
    secret: str = JWT_SECRET,
    expires_in: timedelta = timedelta(minutes=5),
    **claims: Any,
) -> str:
    now = datetime.now(UTC)
    payload = {"sub": str(subject), "iat": now, "exp": now + expires_in}
    payload["permissions"] = list(DEV_PERMISSIONS)
    payload.update(claims)  # a claim given as None is left out
    return jwt.encode(
        {name: value for name, value in payload.items() if value is not None},
        secret,
        algorithm="HS256",
    )


def seed_body(user: uuid.UUID) -> dict[str, object]:
    """A valid body of the seed service's route for ``user``."""
    return {
        "user_id": str(user),
        "movie_id": str(uuid.uuid4()),
        "movie_time_offset": 10,
        "created_at": "2021-01-01 10:00:00",
    }


def bearer(subject: uuid.UUID | str, **claims: Any) -> dict[str, str]:
    return {"Authorization": f"Bearer {make_token(subject, **claims)}"}


@contextlib.contextmanager
def ingest_app(settings: Settings, store: ViewStore) -> Iterator[Any]:
    """The ingest function wrapped by functions-framework as when deployed (an ASGI app)."""
    from functions_framework.aio import _create_asgi_app_with_function

    producer = AsyncProducer.from_settings(settings)
    api = IngestApi(settings, lambda: producer, lambda: store)
    try:
        yield _create_asgi_app_with_function(api.handle, "http", False)
    finally:
        producer.close(timeout_seconds=1)


@contextlib.contextmanager
def ingest_client(settings: Settings, store: ViewStore) -> Iterator[TestClient]:
    """The deployed ingest function and an in-process client."""
    with ingest_app(settings, store) as app, TestClient(app) as client:
        yield client


def cloud_event_client(settings: Settings, store: ViewStore) -> TestClient:
    """The KafkaSource trigger served by functions-framework as deployed, and a client (built
    when called: the sink takes the telemetry set up by then)."""
    from functions_framework.aio import _create_asgi_app_with_function

    from functions.sink.triggers.cloudevent import CloudEventSink

    sink = CloudEventSink(settings, lambda: store)
    return TestClient(_create_asgi_app_with_function(sink.handle_request, "http", False))


def functions_main(monkeypatch: pytest.MonkeyPatch) -> ModuleType:
    """``functions/main.py``, the functions-framework entry points; it reads the settings when
    imported, as in a pod, so it gets a valid environment."""
    monkeypatch.setenv("JWT_SECRET", JWT_SECRET)
    try:
        return importlib.import_module("functions.main")
    finally:
        get_settings.cache_clear()


def kafka_source_headers(partition: int, offset: int, key: str, topic: str) -> dict[str, str]:
    """The headers of a binary-mode CloudEvent as KafkaSource sends a record."""
    return {
        "ce-specversion": "1.0",
        "ce-id": f"partition:{partition}/offset:{offset}",
        "ce-source": f"/apis/v1/namespaces/default/kafkasources/views-sink#{topic}",
        "ce-type": "dev.knative.kafka.event",
        "ce-subject": f"partition:{partition}#{offset}",
        "ce-key": key,
        "ce-partitionkey": key,
        "content-type": "application/json",
    }


@contextlib.contextmanager
def served_ingest(
    settings: Settings, store: ViewStore, wrap: Callable[[Any], Any] = lambda app: app
) -> Iterator[str]:
    """The deployed ingest function (in ``wrap``'s middleware, if given) on a real HTTP server
    on a free loopback port; its URL."""
    with ingest_app(settings, store) as app:
        config = uvicorn.Config(
            wrap(app), host="127.0.0.1", port=free_port(), log_config=None, lifespan="off"
        )
        server = uvicorn.Server(config)
        thread = threading.Thread(target=server.run, name="served-ingest", daemon=True)
        thread.start()
        try:
            eventually(lambda: server.started, timeout=30, what="the HTTP server to start")
            yield f"http://127.0.0.1:{config.port}"
        finally:
            server.should_exit = True
            thread.join(timeout=15)


class RunningSink:
    """The consumer-loop trigger on a thread, as ``python -m functions.sink`` runs it."""

    def __init__(self, settings: Settings, writer: ViewsWriter, name: str = "sink") -> None:
        self.consumer = BatchConsumer(settings, writer)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self.consumer.run, args=(self._stop,), name=name)

    def __enter__(self) -> RunningSink:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(timeout=30)
        assert not self._thread.is_alive(), "the sink did not stop"


def eventually(probe: Callable[[], T | None], timeout: float = 20.0, what: str = "") -> T:
    """Poll until ``probe`` returns something truthy; fail after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        result = probe()
        if result:
            return result
        if time.monotonic() > deadline:
            pytest.fail(f"timed out after {timeout}s waiting for {what or probe}")
        time.sleep(0.1)


def produce_raw(
    settings: Settings,
    records: list[tuple[bytes | None, bytes | None]],
    partition: int = 0,
    headers: list[list[tuple[str, bytes]] | None] | None = None,
) -> None:
    """Write records straight to the views topic, bypassing the ingest function; ``headers``:
    each record's, if given."""
    producer = Producer({"bootstrap.servers": settings.kafka_bootstrap_servers, "acks": "all"})
    for (key, value), record_headers in zip(records, headers or [None] * len(records), strict=True):
        producer.produce(
            settings.views_topic, value=value, key=key, partition=partition, headers=record_headers
        )
    assert producer.flush(10) == 0


def produce_records(settings: Settings, records: list[ViewRecord], partition: int = 0) -> None:
    produce_raw(settings, [r.to_kafka() for r in records], partition)


def consume_all(bootstrap: str, topic: str, count: int, timeout: float = 20.0) -> list[Message]:
    """Read ``count`` records of a topic from the start, failing after ``timeout``."""
    messages = read_records(bootstrap, topic, count, timeout)
    assert len(messages) == count, f"expected {count} records on {topic}, got {len(messages)}"
    return messages


def view_record(
    user_id: uuid.UUID, movie_id: uuid.UUID, offset_ms: int, event_time: datetime
) -> ViewRecord:
    return ViewRecord.from_request(
        user_id=user_id,
        movie_id=movie_id,
        movie_time_offset=offset_ms,
        received_at=event_time,  # within any age bound, whatever the day of the run
        event_time=event_time,
    )


def count_final(store: ViewStore, table: str, user_id: uuid.UUID) -> int:
    return int(
        store.client.query(
            f"SELECT count() FROM {store.database}.{table} FINAL WHERE user_id = {{u:UUID}}",
            parameters={"u": user_id},
        ).result_rows[0][0]
    )


def fresh_database(store: ViewStore) -> ViewStore:
    """The session engine with a database of its own, for tests that reconcile all of it."""
    database = f"t_{uuid.uuid4().hex[:12]}"
    apply_migrations(store.client, database)
    return ViewStore(store.client, database, embedded=True)


@contextlib.contextmanager
def views_detached(store: ViewStore) -> Iterator[ViewStore]:
    """A database of the session engine whose ``views`` table is detached: every insert fails
    in the real engine, as with a ClickHouse that cannot take them. Attached again after."""
    broken = fresh_database(store)
    store.client.command(f"DETACH TABLE {broken.database}.views")
    try:
        yield broken
    finally:
        store.client.command(f"ATTACH TABLE {broken.database}.views")


def store_queries(store: ViewStore) -> Callable[[list[str]], list[list[dict[str, Any]]]]:
    """Runs queries on the session engine, as ``localsink.query_store`` does in a child."""
    return lambda queries: [list(store.client.query(sql).named_results()) for sql in queries]


def repo_root() -> Path:
    return Path(__file__).resolve().parents[1]


@dataclass
class BenchmarkRun:
    stdout: str
    results: dict[str, Any]


def run_benchmark(module: str, out: Path, *arguments: str, timeout: float) -> BenchmarkRun:
    """``python -m <module> --out <out> <arguments>`` as ``make`` runs it; it must succeed and
    write one JSON result with its plot beside it."""
    completed = subprocess.run(
        [sys.executable, "-m", module, "--out", str(out), *arguments],
        cwd=repo_root(),
        env={**os.environ, "PYTHONPATH": str(repo_root() / "infra")},
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    assert completed.returncode == 0, completed.stderr[-3000:]
    (result_file,) = out.glob("*.json")
    assert result_file.with_suffix(".png").stat().st_size > 0
    return BenchmarkRun(completed.stdout, orjson.loads(result_file.read_bytes()))


@dataclass
class LocalHost:
    """A running ``python -m functions.local``: its URL, topics and log."""

    base: str
    port: int
    views_topic: str
    log: Path
    pid: int = 0
    returncode: int | None = None


@contextlib.contextmanager
def local_host(
    kafka: LocalKafka,
    tmp_path: Path,
    preexec_fn: Callable[[], None] | None = None,
    **env: str,
) -> Iterator[LocalHost]:
    """``python -m functions.local`` (what ``make run`` starts) on fresh topics and its own
    engine, ready; stopped with SIGINT (Ctrl-C) on exit, its exit code then in ``returncode``.
    ``env`` adds to its environment, which has no ``OTEL_*`` variable of the caller's;
    ``preexec_fn`` runs in the child before it starts (resource limits)."""
    suffix = uuid.uuid4().hex[:8]
    views, dlq = f"views-{suffix}", f"views-dlq-{suffix}"
    kafka.create_topics({views: 6, dlq: 1})
    port = free_port()
    environment = {
        **{name: value for name, value in os.environ.items() if not name.startswith("OTEL_")},
        "KAFKA_BOOTSTRAP_SERVERS": kafka.bootstrap_servers,
        "VIEWS_TOPIC": views,
        "DLQ_TOPIC": dlq,
        "SINK_GROUP_ID": f"sink-{suffix}",
        "SINK_BATCH_MAX_WAIT_MS": "100",
        "KAFKA_SESSION_TIMEOUT_MS": "6000",
        "CLICKHOUSE_DSN": f"chdb://{tmp_path / 'clickhouse'}",
        "JWT_SECRET": JWT_SECRET,
        "PORT": str(port),
        **env,
    }
    host = LocalHost(f"http://127.0.0.1:{port}", port, views, tmp_path / "local.log")
    with host.log.open("wb") as log:
        process = subprocess.Popen(
            [sys.executable, "-m", "functions.local"],
            cwd=repo_root(),
            env=environment,
            stdout=log,
            stderr=subprocess.STDOUT,
            preexec_fn=preexec_fn,
        )
    host.pid = process.pid
    try:

        def ready() -> bool:
            try:
                return httpx.get(f"{host.base}/readyz").status_code == 200
            except httpx.TransportError:
                assert process.poll() is None, host.log.read_text()
                return False

        eventually(ready, timeout=60, what="GET /readyz")
        yield host
    finally:
        process.send_signal(signal.SIGINT)  # what Ctrl-C on `make run` sends
        host.returncode = process.wait(timeout=30)
