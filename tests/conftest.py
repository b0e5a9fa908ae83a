"""Shared fixtures: one real Kafka broker and one real ClickHouse engine for the whole session.

Tests isolate from each other by names, not by restarts: each test gets its own topics and
consumer group, and its events carry fresh random user and movie ids. ``TEST_CLICKHOUSE_DSN``
points the suite at a ClickHouse server instead of the embedded engine.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import pytest
from localkafka import LocalKafka, free_port
from starlette.testclient import TestClient
from support import JWT_SECRET, TEST_DATABASE, RunningSink, ingest_client

from clickhouse.migrate import apply_migrations
from clickhouse.store import ViewStore, connect
from functions.settings import Settings

# Settings has no DSN default (a deployment must name its database): tests that build Settings
# from the environment and never open the store get the in-memory engine.
os.environ.setdefault("CLICKHOUSE_DSN", "chdb://memory")


@pytest.fixture(scope="session")
def kafka(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalKafka]:
    broker = LocalKafka(tmp_path_factory.mktemp("kafka"), free_port())
    broker.start()
    yield broker
    broker.stop()


@pytest.fixture(scope="session")
def clickhouse_dsn(tmp_path_factory: pytest.TempPathFactory) -> str:
    return os.environ.get("TEST_CLICKHOUSE_DSN") or (
        f"chdb://{tmp_path_factory.mktemp('clickhouse')}"
    )


@pytest.fixture(scope="session")
def store(clickhouse_dsn: str) -> ViewStore:
    client = connect(clickhouse_dsn)
    apply_migrations(client, TEST_DATABASE)
    return ViewStore(client, TEST_DATABASE, embedded=clickhouse_dsn.startswith("chdb:"))


@dataclass(frozen=True)
class Topics:
    views: str
    dlq: str


@pytest.fixture
def topics(kafka: LocalKafka) -> Topics:
    suffix = uuid.uuid4().hex[:8]
    names = Topics(views=f"views-{suffix}", dlq=f"views-dlq-{suffix}")
    kafka.create_topics({names.views: 6, names.dlq: 1})
    return names


@pytest.fixture
def settings(kafka: LocalKafka, topics: Topics, clickhouse_dsn: str) -> Settings:
    return Settings(
        kafka_bootstrap_servers=kafka.bootstrap_servers,
        views_topic=topics.views,
        dlq_topic=topics.dlq,
        clickhouse_dsn=clickhouse_dsn,
        clickhouse_database=TEST_DATABASE,
        jwt_algorithm="HS256",
        jwt_secret=JWT_SECRET,
        sink_group_id=f"sink-{uuid.uuid4().hex[:8]}",
        sink_batch_max_wait_ms=100,
        kafka_session_timeout_ms=6000,
        kafka_delivery_timeout_ms=5000,
    )


@pytest.fixture
def api(settings: Settings, store: ViewStore) -> Iterator[TestClient]:
    with ingest_client(settings, store) as client:
        yield client


@pytest.fixture
def sink_factory(store: ViewStore) -> Callable[[Settings], RunningSink]:
    return lambda settings: RunningSink(settings, store)
