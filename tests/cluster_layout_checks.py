"""The cluster layout on one embedded engine (run by test_clickhouse_cluster.py, in a process of
its own: the engine here is configured with a cluster, and a process hosts one engine).

The configuration declares the cluster ``movies``: two shards, each one replica at this host,
which an embedded engine cannot serve (it has no TCP server). So:

- each shard is a database of its own (``shard_1``, ``shard_2``) holding the statements
  rendered for the cluster, with ``ON CLUSTER`` and the ``Replicated`` engines taken out (no
  Keeper here): the local tables, the views on them, the entry point and the ``Distributed``
  tables are all created by the engine;
- rows are placed on the shard the sharding key names, computed by the engine, which is what
  the ``Distributed`` table does with an insert;
- reads run the store's own queries over ``Merge`` tables spanning the shards' local tables:
  ``FINAL`` applies per shard, as it does under a ``Distributed`` table, and the aggregate
  then spans the shards. ``EXPLAIN`` shows the same queries on the ``Distributed`` tables are
  plans that read from the remote shards;
- a write through the ``Distributed`` table reaches for the shards and fails as a store that
  is unavailable (connection refused), never as refused records.
"""

from __future__ import annotations

import random
import re
import uuid
from collections.abc import Iterator, Sequence
from datetime import UTC, datetime, timedelta
from typing import Any

import clickhouse_connect
import pytest
from clickhouse_connect.driver.client import Client
from support import view_record

from clickhouse import queries
from clickhouse.migrate import MigrationError, Plan, apply_migrations, set_retention
from clickhouse.store import ViewStore
from clickhouse.topology import LOCAL_SUFFIX, SHARDING_KEY
from functions.errors import RecordsRefused, StoreUnavailable
from functions.events import ViewRecord

CLUSTER = "movies"
SHARDS = ("shard_1", "shard_2")
CONFIG = f"""<clickhouse>
  <remote_servers>
    <{CLUSTER}>
      <shard><internal_replication>true</internal_replication>
        <replica><host>127.0.0.1</host><port>9000</port></replica></shard>
      <shard><internal_replication>true</internal_replication>
        <replica><host>127.0.0.1</host><port>9000</port></replica></shard>
    </{CLUSTER}>
  </remote_servers>
  <macros><shard>1</shard><replica>here</replica></macros>
</clickhouse>
"""


class WithoutKeeper:
    """A client that runs cluster DDL on this server alone, with non-replicated engines."""

    def __init__(self, client: Client) -> None:
        self._client = client

    def command(self, statement: str) -> Any:
        statement = statement.replace(f" ON CLUSTER '{CLUSTER}'", "")
        statement = re.sub(r"Replicated(\w*MergeTree)\('[^']*', '[^']*'(?:, )?", r"\1(", statement)
        return self._client.command(statement)

    def query(self, statement: str, **options: Any) -> Any:
        return self._client.query(statement, **options)


@pytest.fixture(scope="module")
def client(tmp_path_factory: pytest.TempPathFactory) -> Client:
    directory = tmp_path_factory.mktemp("engine")
    (directory / "config.xml").write_text(CONFIG)
    return clickhouse_connect.get_client(
        interface="chdb",
        path=str(directory / "data"),
        chdb_options={"config-file": str(directory / "config.xml")},
    )


@pytest.fixture(scope="module")
def shards(client: Client) -> list[str]:
    for shard in SHARDS:
        applied = apply_migrations(WithoutKeeper(client), shard, cluster=CLUSTER)  # type: ignore[arg-type]
        assert applied, f"{shard}: nothing applied"
        assert apply_migrations(WithoutKeeper(client), shard, cluster=CLUSTER) == []  # type: ignore[arg-type]
    return list(SHARDS)


def _tables(client: Client, database: str) -> dict[str, str]:
    rows = client.query(
        "SELECT name, engine FROM system.tables WHERE database = {db:String}",
        parameters={"db": database},
    ).result_rows
    return dict(rows)


def test_every_rendered_statement_runs_without_keeper(client: Client, shards: list[str]) -> None:
    tables = _tables(client, shards[0])
    assert tables["views"] == tables["latest_view"] == "Distributed"
    assert tables[f"views{LOCAL_SUFFIX}"] == tables[f"latest_view{LOCAL_SUFFIX}"]
    assert tables[f"views{LOCAL_SUFFIX}"] == "ReplacingMergeTree"
    assert tables["canonical_view_lines"] == "Null"
    assert tables["latest_view_mv"] == tables["canonical_view_lines_mv"] == "MaterializedView"
    assert client.query("SELECT count() FROM system.clusters WHERE cluster = 'movies'").result_rows[
        0
    ][0] == len(SHARDS)


def test_retention_is_set_on_the_local_tables(client: Client, shards: list[str]) -> None:
    plan = Plan.make(shards[1], CLUSTER)
    assert "ON CLUSTER 'movies'" in plan.retention(30)
    assert set_retention(WithoutKeeper(client), plan, 30)  # type: ignore[arg-type]
    assert not set_retention(WithoutKeeper(client), plan, 30)  # type: ignore[arg-type]
    assert set_retention(WithoutKeeper(client), plan, 0)  # type: ignore[arg-type]


def test_a_version_claimed_by_another_run_is_not_applied_again(client: Client) -> None:
    database = "racing"
    first, second = Plan.make(database, CLUSTER), Plan.make(database, CLUSTER)
    keeperless = WithoutKeeper(client)
    for statement in first.preamble():
        keeperless.command(statement)
    migration = first.migrations[0]
    # The first run claimed version 1 and is applying it; the second's claim carries the same
    # dedup token, so it is dropped and the second run reads the first one's claim back.
    client.command(first.record(migration, queries.CLAIM_MIGRATION))
    client.command(second.record(migration, queries.CLAIM_MIGRATION))
    claims = client.query(queries.MIGRATION_CLAIMS.format(db=database, version=1)).result_rows
    assert [runner for runner, _ in claims] == [first.runner]
    with pytest.raises(MigrationError, match=f"claimed by {first.runner}"):
        apply_migrations(keeperless, database, cluster=CLUSTER)  # type: ignore[arg-type]
    assert "views" not in _tables(client, database)


def _shard_of(client: Client, users: Sequence[uuid.UUID]) -> dict[uuid.UUID, str]:
    """The shard the Distributed tables' sharding key sends each user to (equal weights)."""
    rows = client.query(
        f"SELECT user_id, {SHARDING_KEY} % {len(SHARDS)}"
        " FROM (SELECT arrayJoin({users:Array(UUID)}) AS user_id)",
        parameters={"users": list(users)},
    ).result_rows
    return {user: SHARDS[int(slot)] for user, slot in rows}


def _insert_local(client: Client, shard: str, records: list[ViewRecord]) -> None:
    columns = [name for name, _ in queries.VIEW_COLUMNS]
    client.insert(
        f"{shard}.views{LOCAL_SUFFIX}",
        [[getattr(record, name) for name in columns] for record in records],
        column_names=columns,
        column_type_names=[ch_type for _, ch_type in queries.VIEW_COLUMNS],
    )


def _viewings() -> Iterator[ViewRecord]:
    """Several viewers and movies, each viewer's events out of order and partly redelivered."""
    rng = random.Random(19)
    movies = [uuid.uuid4() for _ in range(6)]
    start = datetime(2026, 11, 1, tzinfo=UTC)
    for _ in range(40):
        user = uuid.uuid4()
        for movie in rng.sample(movies, rng.randint(1, 4)):
            events = [
                view_record(user, movie, rng.randint(0, 7_200_000), start + timedelta(minutes=m))
                for m in rng.sample(range(600), rng.randint(1, 5))
            ]
            yield from events
            yield from rng.sample(events, rng.randint(0, len(events)))  # redelivered copies


@pytest.fixture(scope="module")
def readers(client: Client, shards: list[str]) -> tuple[ViewStore, ViewStore]:
    """The same events on one server (``single``) and placed on the shards (``spanning``)."""
    records = list(_viewings())
    single = ViewStore(client, "single", embedded=True)
    apply_migrations(client, single.database)
    single.insert_views(records, "all")
    placement = _shard_of(client, sorted({record.user_id for record in records}))
    for shard in shards:
        _insert_local(client, shard, [r for r in records if placement[r.user_id] == shard])
    assert all(_count(client, f"{shard}.views{LOCAL_SUFFIX}") for shard in shards)
    client.command("CREATE DATABASE IF NOT EXISTS spanning")
    for table in ("views", "latest_view"):
        client.command(
            f"CREATE TABLE spanning.{table} AS {shards[0]}.{table}{LOCAL_SUFFIX}"
            f" ENGINE = Merge(REGEXP('^shard_'), '^{table}{LOCAL_SUFFIX}$')"
        )
    return single, ViewStore(client, "spanning", embedded=True, cluster=CLUSTER)


def _count(client: Client, table: str) -> int:
    return int(client.query(f"SELECT count() FROM {table}").result_rows[0][0])


def test_positions_are_the_same_on_the_shards(
    client: Client, readers: tuple[ViewStore, ViewStore]
) -> None:
    single, spanning = readers
    pairs = client.query("SELECT DISTINCT user_id, movie_id FROM single.views").result_rows
    assert len(pairs) > 40
    for user, movie in pairs:
        assert spanning.latest_position(user, movie) == single.latest_position(user, movie)


def test_most_watched_is_the_same_on_the_shards(readers: tuple[ViewStore, ViewStore]) -> None:
    single, spanning = readers
    for limit in (1, 3, 10):
        assert spanning.most_watched(limit) == single.most_watched(limit)


@pytest.mark.parametrize(
    ("query", "parameters", "settings"),
    [
        (
            queries.LATEST_POSITION,
            {"user_id": uuid.uuid4(), "movie_id": uuid.uuid4()},
            queries.CLUSTER_POSITION_SETTINGS,
        ),
        (queries.MOST_WATCHED_VIEWERS, {"limit": 10}, {}),
        (queries.MOST_WATCHED_EVENTS, {"movies": [uuid.uuid4()]}, {}),
    ],
    ids=["position", "viewers", "events"],
)
def test_the_read_queries_are_distributed_plans(
    client: Client,
    shards: list[str],
    query: str,
    parameters: dict[str, Any],
    settings: dict[str, Any],
) -> None:
    plan = client.query(
        f"EXPLAIN {query.format(db=shards[0])}", parameters=parameters, settings=settings
    ).result_rows
    assert any("ReadFromRemote" in row[0] for row in plan), plan


def _cluster_store(client: Client, shards: list[str]) -> ViewStore:
    return ViewStore(client, shards[0], embedded=True, cluster=CLUSTER)


def test_an_insert_waits_for_the_shards_and_unreachable_shards_mean_unavailable(
    client: Client, shards: list[str]
) -> None:
    """The cluster's insert settings are accepted and the insert goes to the shards at once:
    with no shard reachable it fails (rather than being queued on a local disk) as a store that
    cannot take rows now, so the sink rewinds and retries the batch with the same token."""
    store = _cluster_store(client, shards)
    record = view_record(uuid.uuid4(), uuid.uuid4(), 1, datetime(2026, 11, 1, tzinfo=UTC))
    with pytest.raises(StoreUnavailable, match="ALL_CONNECTION_TRIES_FAILED"):
        store.insert_views([record], "t1")
    with pytest.raises(StoreUnavailable, match="ALL_CONNECTION_TRIES_FAILED"):
        store.insert_canonical_lines(record.to_kafka()[1] + b"\n", "t2")
    # Nothing was queued on the local disk for a later background send.
    pending = client.query(
        "SELECT sum(data_files) FROM system.distribution_queue WHERE database = {db:String}",
        parameters={"db": shards[0]},
    ).result_rows
    assert pending == [(0,)]


def test_without_the_cluster_settings_an_insert_is_acknowledged_before_any_shard_has_it(
    client: Client, shards: list[str]
) -> None:
    """Why the settings: by default the Distributed table answers once the rows are queued on
    the local disk, with no shard reachable, so the sink would commit offsets for rows that no
    shard holds (and that this server's disk alone keeps)."""
    unaware = ViewStore(client, shards[1], embedded=True)
    record = view_record(uuid.uuid4(), uuid.uuid4(), 1, datetime(2026, 11, 1, tzinfo=UTC))
    client.command(f"SYSTEM STOP DISTRIBUTED SENDS {shards[1]}.views")
    try:
        unaware.insert_views([record], "t4")
        queued = client.query(
            "SELECT sum(data_files) FROM system.distribution_queue WHERE database = {db:String}",
            parameters={"db": shards[1]},
        ).result_rows
    finally:  # the module's other checks share the engine
        client.command(f"SYSTEM START DISTRIBUTED SENDS {shards[1]}.views")
    assert queued[0][0] >= 1


def test_refused_lines_are_refused_before_reaching_the_shards(
    client: Client, shards: list[str]
) -> None:
    store = _cluster_store(client, shards)
    record = view_record(uuid.uuid4(), uuid.uuid4(), 1, datetime(2026, 11, 1, tzinfo=UTC))
    line = record.to_kafka()[1].replace(b'"schema_version":1', b'"schema_version":2')
    with pytest.raises(RecordsRefused, match="not a view record"):
        store.insert_canonical_lines(line + b"\n", "t3")
