"""Every statement the project sends to ClickHouse, beside the migrations that create the tables.

``{db}`` is the database; ``{name:Type}`` placeholders are ClickHouse query parameters.
"""

from __future__ import annotations

__all__ = [
    "ATTACH_VIEWS",
    "CANONICAL_LINES_TABLE",
    "CREATE_DATABASE",
    "CREATE_MIGRATIONS_TABLE",
    "DATABASE_BYTES_ON_DISK",
    "DETACH_VIEWS",
    "LATEST_POSITION",
    "MIGRATIONS_TABLE",
    "MOST_WATCHED_EVENTS",
    "MOST_WATCHED_ON_DAY",
    "MOST_WATCHED_VIEWERS",
    "RECORDED_MIGRATIONS",
    "VIEWERS_PER_MOVIE",
    "VIEWER_HISTORY",
    "VIEWS_TABLE",
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
