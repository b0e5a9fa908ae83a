"""Every statement the project sends to ClickHouse, beside the migrations that create the tables.

``{db}`` is the database; ``{name:Type}`` placeholders are ClickHouse query parameters.
"""

from __future__ import annotations

__all__ = [
    "ATTACH_VIEWS",
    "CANONICAL_LINES_TABLE",
    "CLAIM_MIGRATION",
    "CLUSTER_INSERT_SETTINGS",
    "CLUSTER_POSITION_SETTINGS",
    "CREATE_CLUSTER_MIGRATIONS_TABLE",
    "CREATE_DATABASE",
    "CREATE_DATABASE_ON_CLUSTER",
    "CREATE_MIGRATIONS_TABLE",
    "DATABASE_BYTES_ON_DISK",
    "DETACH_VIEWS",
    "LATEST_POSITION",
    "MIGRATIONS_TABLE",
    "MIGRATION_CLAIMS",
    "MOST_WATCHED_EVENTS",
    "MOST_WATCHED_ON_DAY",
    "MOST_WATCHED_VIEWERS",
    "RECORDED_CLUSTER_MIGRATIONS",
    "RECORDED_MIGRATIONS",
    "RECORD_CLUSTER_MIGRATION",
    "RECORD_MIGRATION",
    "TABLE_ENGINE",
    "VIEWERS_PER_MOVIE",
    "VIEWER_HISTORY",
    "VIEWS_TABLE",
    "VIEWS_TTL",
    "VIEWS_WITHOUT_TTL",
    "VIEW_COLUMNS",
]

# The columns the sink writes into views (clickhouse/migrations/0001_views.sql creates them).
VIEW_COLUMNS = (
    ("event_id", "UUID"),
    ("user_id", "UUID"),
    ("movie_id", "UUID"),
    ("movie_time_offset", "UInt64"),
    ("event_time", "DateTime64(3, 'UTC')"),
    ("received_at", "DateTime64(3, 'UTC')"),
)
VIEWS_TABLE = "{db}.views"
# Lines of the form clickhouse/canonical.py describes (migration 0003).
CANONICAL_LINES_TABLE = "{db}.canonical_view_lines"

LATEST_POSITION = (
    "SELECT movie_time_offset, event_time FROM {db}.latest_view FINAL"
    " WHERE user_id = {{user_id:UUID}} AND movie_id = {{movie_id:UUID}}"
)
MOST_WATCHED_VIEWERS = (
    "SELECT movie_id, count() FROM {db}.latest_view FINAL GROUP BY movie_id"
    " ORDER BY count() DESC LIMIT {{limit:UInt32}} WITH TIES"
)
# PREWHERE before FINAL is exact here: movie_id is in the sorting key, so every copy of an event
# has the same movie_id.
MOST_WATCHED_EVENTS = (
    "SELECT movie_id, count() FROM {db}.views FINAL"
    " PREWHERE movie_id IN {{movies:Array(UUID)}} GROUP BY movie_id"
)

# The storage study's other reads (loadtest/storage): what the product would ask next.
# Every copy of an event has its event_id: counting distinct ids is exact without FINAL, which
# would merge all of views before filtering (3-4 times slower on 1M events in the study).
MOST_WATCHED_ON_DAY = (
    "SELECT movie_id, uniqExact(event_id) AS events FROM {db}.views"
    " WHERE event_time >= {{start:DateTime64(3, 'UTC')}}"
    " AND event_time < {{end:DateTime64(3, 'UTC')}}"
    " GROUP BY movie_id ORDER BY events DESC LIMIT {{limit:UInt32}} WITH TIES"
)
VIEWER_HISTORY = (
    "SELECT movie_id, movie_time_offset, event_time FROM {db}.views FINAL"
    " WHERE user_id = {{user_id:UUID}} ORDER BY event_time"
)
VIEWERS_PER_MOVIE = "SELECT movie_id, count() FROM {db}.latest_view FINAL GROUP BY movie_id"
DATABASE_BYTES_ON_DISK = (
    "SELECT sum(bytes_on_disk) FROM system.parts WHERE database = {{database:String}} AND active"
)

# Fault injection (functions/sink/faults.py): the real engine then refuses inserts.
DETACH_VIEWS = "DETACH TABLE {db}.views"
ATTACH_VIEWS = "ATTACH TABLE {db}.views"

CREATE_DATABASE = "CREATE DATABASE IF NOT EXISTS {db}"
MIGRATIONS_TABLE = "{db}.schema_migrations"
CREATE_MIGRATIONS_TABLE = (
    "CREATE TABLE IF NOT EXISTS {db}.schema_migrations"
    " (version UInt32, name String, checksum String,"
    "  applied_at DateTime64(3, 'UTC') DEFAULT now64(3))"
    " ENGINE = MergeTree ORDER BY version"
)
RECORDED_MIGRATIONS = "SELECT version, checksum FROM {db}.schema_migrations"
RECORD_MIGRATION = (
    "INSERT INTO {db}.schema_migrations (version, name, checksum)"
    " VALUES ({version}, '{name}', '{checksum}')"
)

# --- a cluster (clickhouse/topology.py renders the migrations) ---------------------------------

# What the sink's inserts add on a cluster (docs/clickhouse-cluster.md, "Writes"). The insert
# into the Distributed table answers only once every shard's replicated table holds its rows
# (foreground = synchronous), and each shard's part of the insert carries the insert's
# insert_deduplication_token, so a retried batch is dropped on the shards that already have it.
# insert_quorum 'auto' (a majority of the shard's replicas) makes "stored" mean "on two
# replicas" rather than "on one disk", at the price of refusing writes to a shard that has
# lost a replica of two: the sink then retries, Kafka keeps the records.
CLUSTER_INSERT_SETTINGS: dict[str, str | int] = {
    "distributed_foreground_insert": 1,
    "insert_quorum": "auto",
    "insert_quorum_parallel": 1,
    # A replica that just died still counts as alive until its Keeper session expires; a quorum
    # insert then waits for it. A minute (default: ten) bounds the wait before the sink retries.
    "insert_quorum_timeout": 60_000,
}
# A position is one viewer's: the sharding key names the one shard that can hold it.
CLUSTER_POSITION_SETTINGS: dict[str, str | int] = {"optimize_skip_unused_shards": 1}

CREATE_DATABASE_ON_CLUSTER = "CREATE DATABASE IF NOT EXISTS {db} ON CLUSTER '{cluster}'"
# One replica set spanning every server (no {{shard}} in the path), so that all servers agree on
# what was applied. A version is claimed before its statements run: the claim's dedup token is the
# same for every runner, so Keeper keeps the first claim only and a second runner reads it back
# as someone else's. Quorum writes + sequential reads make the read-back see the winning claim.
CREATE_CLUSTER_MIGRATIONS_TABLE = (
    "CREATE TABLE IF NOT EXISTS {db}.schema_migrations ON CLUSTER '{cluster}'"
    " (version UInt32, name String, checksum String,"
    "  state Enum8('claimed' = 1, 'applied' = 2), runner String,"
    "  applied_at DateTime64(3, 'UTC') DEFAULT now64(3))"
    " ENGINE = ReplicatedMergeTree('/clickhouse/tables/all/{db}/schema_migrations', '{{replica}}')"
    " ORDER BY (version, state)"
    # Deduplication on a single server too (tests), where the Replicated engine is swapped out.
    " SETTINGS non_replicated_deduplication_window = 1000"
)
_RECORD_STATE = (
    "INSERT INTO {db}.schema_migrations (version, name, checksum, state, runner)"
    " SETTINGS insert_deduplication_token = '{db}-{version}-{state}', insert_quorum = 'auto'"
    " VALUES ({version}, '{name}', '{checksum}', '{state}', '{runner}')"
)
CLAIM_MIGRATION = _RECORD_STATE.replace("{state}", "claimed")
RECORD_CLUSTER_MIGRATION = _RECORD_STATE.replace("{state}", "applied")
RECORDED_CLUSTER_MIGRATIONS = (
    "SELECT version, checksum FROM {db}.schema_migrations WHERE state = 'applied'"
    " SETTINGS select_sequential_consistency = 1"
)
MIGRATION_CLAIMS = (
    "SELECT runner, applied_at FROM {db}.schema_migrations"
    " WHERE version = {version} AND state = 'claimed'"
    " SETTINGS select_sequential_consistency = 1"
)

# Retention of the raw events (python -m clickhouse.migrate --views-ttl-days): {table} is views on
# one server, views_local on a cluster; {on_cluster} is empty or "ON CLUSTER '<name>' ". Parts
# are months (PARTITION BY toYYYYMM(event_time)), so expired months are dropped whole.
VIEWS_TTL = (
    "ALTER TABLE {table} {on_cluster}MODIFY TTL toDateTime(event_time) + INTERVAL {days} DAY"
)
VIEWS_WITHOUT_TTL = "ALTER TABLE {table} {on_cluster}REMOVE TTL"
TABLE_ENGINE = (
    "SELECT engine_full FROM system.tables WHERE database = {db:String} AND name = {table:String}"
)
