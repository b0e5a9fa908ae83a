"""The three stores under study, each used the way an expert would use it, behind one interface.

- **ClickHouse**: the production schema (``clickhouse/migrations``), the sink's insert
  (``ViewStore.insert_canonical_lines``: the Kafka values as they are) and the queries of
  ``clickhouse/queries.py``; the embedded engine (chDB), as ``make run`` and the tests use it.
- **PostgreSQL 15**: ``COPY … (FORMAT binary)`` into a temporary staging table, then one
  ``INSERT … ON CONFLICT DO NOTHING`` into ``views`` (primary key = the redelivery identity) and
  an upsert of the latest position per viewer and movie that only a newer event wins; a BRIN
  index on the event time (rows arrive roughly in time order).
- **DuckDB**: Arrow tables appended as they are (duplicates removed at read time, as ClickHouse's
  ``FINAL`` does) and the same latest-position upsert, with an ART index for a viewer's events.

Every read returns plain values (UUIDs as text, times in ms) so that answers compare exactly.
"""

from __future__ import annotations

import threading
from abc import ABC, abstractmethod
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from uuid import UUID

import duckdb
import psycopg

from clickhouse import queries
from clickhouse.migrate import apply_migrations
from clickhouse.store import ViewStore
from loadtest.storage.dataset import Batch
from loadtest.storage.postgres import PostgresServer

__all__ = ["ENGINES", "ENGINE_TYPES", "Engine", "open_engine"]

History = list[tuple[str, int, int]]  # (movie, offset, event time ms), by time


def _ms(value: datetime) -> int:
    return round(value.timestamp() * 1000)


def _counts(rows: Any) -> dict[str, int]:
    return {str(movie): int(count) for movie, count in rows}


def _history(rows: Any) -> History:
    return sorted((str(movie), int(offset), int(ms)) for movie, offset, ms in rows)


class Engine(ABC):
    """One store: a schema, an insert, the four reads; safe to call from two threads."""

    name: str

    @staticmethod
    @abstractmethod
    def encode(batch: Batch) -> Any:
        """The batch as this engine's client sends it (not timed: the sink holds it so)."""

    @abstractmethod
    def insert(self, payload: Any) -> None: ...

    def finish_load(self) -> None:
        """What an operator does after a bulk load (statistics, checkpoint)."""

    @abstractmethod
    def position(self, user: str, movie: str) -> tuple[int, int] | None: ...

    @abstractmethod
    def day_top(self, start_ms: int, end_ms: int, limit: int) -> dict[str, int]: ...

    @abstractmethod
    def history(self, user: str) -> History: ...

    @abstractmethod
    def viewers_per_movie(self) -> dict[str, int]: ...

    @abstractmethod
    def bytes_on_disk(self) -> int:
        """Tables and indexes as stored (compressed where the engine compresses)."""

    @abstractmethod
    def close(self) -> None: ...


class ClickHouse(Engine):
    name = "clickhouse"
    _DATABASE = "study"

    def __init__(self, folder: Path, fresh: bool) -> None:
        self._store = ViewStore.open(f"chdb://{folder}", self._DATABASE)
        # The embedded engine answers one statement at a time (ViewStore does the same).
        self._lock = threading.Lock()
        self._batches = 0
        if fresh:
            apply_migrations(self._store.client, self._DATABASE)

    def _query(self, statement: str, **parameters: Any) -> Any:
        with self._lock:
            return self._store.client.query(
                statement.format(db=self._DATABASE), parameters=parameters
            ).result_rows

    @staticmethod
    def encode(batch: Batch) -> Any:
        return batch.kafka_values(), f"study-{batch.first}-{batch.first + len(batch) - 1}"

    def insert(self, payload: Any) -> None:
        lines, token = payload
        with self._lock:
            self._store.insert_canonical_lines(lines, token)

    def position(self, user: str, movie: str) -> tuple[int, int] | None:
        with self._lock:
            found = self._store.latest_position(UUID(user), UUID(movie))
        return None if found is None else (found.movie_time_offset, _ms(found.event_time))

    def day_top(self, start_ms: int, end_ms: int, limit: int) -> dict[str, int]:
        start = datetime.fromtimestamp(start_ms / 1000, UTC)
        end = datetime.fromtimestamp(end_ms / 1000, UTC)
        return _counts(self._query(queries.MOST_WATCHED_ON_DAY, start=start, end=end, limit=limit))

    def history(self, user: str) -> History:
        rows = self._query(queries.VIEWER_HISTORY, user_id=UUID(user))
        return _history((movie, offset, _ms(time)) for movie, offset, time in rows)

    def viewers_per_movie(self) -> dict[str, int]:
        return _counts(self._query(queries.VIEWERS_PER_MOVIE))

    def bytes_on_disk(self) -> int:
        return int(self._query(queries.DATABASE_BYTES_ON_DISK, database=self._DATABASE)[0][0])

    def close(self) -> None:
        self._store.client.close()


_PG_SCHEMA = """
CREATE TABLE views (
    event_id uuid NOT NULL,
    user_id uuid NOT NULL,
    movie_id uuid NOT NULL,
    movie_time_offset bigint NOT NULL,
    event_time timestamptz NOT NULL,
    received_at timestamptz NOT NULL,
    PRIMARY KEY (user_id, movie_id, event_id)
);
CREATE INDEX views_event_time ON views USING brin (event_time);
CREATE TABLE latest_view (
    user_id uuid NOT NULL,
    movie_id uuid NOT NULL,
    movie_time_offset bigint NOT NULL,
    event_time timestamptz NOT NULL,
    event_id uuid NOT NULL,
    PRIMARY KEY (user_id, movie_id)
);
"""
_PG_STAGING = "CREATE TEMPORARY TABLE staging (LIKE views) ON COMMIT DELETE ROWS"
_PG_COPY = "COPY staging FROM STDIN (FORMAT binary)"
_PG_STORE_VIEWS = "INSERT INTO views SELECT * FROM staging ON CONFLICT DO NOTHING"
_PG_UPSERT_LATEST = """
INSERT INTO latest_view (user_id, movie_id, movie_time_offset, event_time, event_id)
SELECT DISTINCT ON (user_id, movie_id) user_id, movie_id, movie_time_offset, event_time, event_id
FROM staging ORDER BY user_id, movie_id, event_time DESC
ON CONFLICT (user_id, movie_id) DO UPDATE
SET movie_time_offset = excluded.movie_time_offset,
    event_time = excluded.event_time,
    event_id = excluded.event_id
WHERE latest_view.event_time < excluded.event_time
"""
_PG_MS = "(extract(epoch FROM event_time) * 1000)::bigint"
_PG_POSITION = (
    f"SELECT movie_time_offset, {_PG_MS} FROM latest_view WHERE user_id = %s AND movie_id = %s"
)
_PG_DAY_TOP = (
    "SELECT movie_id, count(*) FROM views WHERE event_time >= %s AND event_time < %s"
    " GROUP BY movie_id ORDER BY count(*) DESC FETCH FIRST %s ROWS WITH TIES"
)
_PG_HISTORY = (
    f"SELECT movie_id, movie_time_offset, {_PG_MS} FROM views WHERE user_id = %s"
    " ORDER BY event_time"
)
_PG_VIEWERS = "SELECT movie_id, count(*) FROM latest_view GROUP BY movie_id"
_PG_BYTES = (
    "SELECT sum(pg_total_relation_size(relid)) FROM pg_stat_user_tables"
    " WHERE relname IN ('views', 'latest_view')"
)


class Postgres(Engine):
    name = "postgres"

    def __init__(self, server: PostgresServer, fresh: bool) -> None:
        self._server = server
        self._local = threading.local()
        self._connections: list[psycopg.Connection[Any]] = []
        self._guard = threading.Lock()
        if fresh:
            with self._connection().transaction():
                self._connection().execute(_PG_SCHEMA)

    def _connection(self) -> psycopg.Connection[Any]:
        connection: psycopg.Connection[Any] | None = getattr(self._local, "connection", None)
        if connection is None:
            connection = psycopg.connect(self._server.conninfo, autocommit=True)
            self._local.connection = connection
            with self._guard:
                self._connections.append(connection)
        return connection

    @staticmethod
    def encode(batch: Batch) -> Any:
        return batch.copy_binary()

    def insert(self, payload: Any) -> None:
        connection = self._connection()
        if not getattr(self._local, "staging", False):
            connection.execute(_PG_STAGING)
            self._local.staging = True
        with connection.transaction(), connection.cursor() as cursor:
            with cursor.copy(_PG_COPY) as copy:
                copy.write(payload)
            cursor.execute(_PG_STORE_VIEWS)
            cursor.execute(_PG_UPSERT_LATEST)

    def finish_load(self) -> None:
        self._connection().execute("VACUUM (ANALYZE) views, latest_view")

    def _rows(self, statement: str, *parameters: Any) -> list[Any]:
        return self._connection().execute(statement, parameters, prepare=True).fetchall()

    def position(self, user: str, movie: str) -> tuple[int, int] | None:
        rows = self._rows(_PG_POSITION, UUID(user), UUID(movie))
        return (int(rows[0][0]), int(rows[0][1])) if rows else None

    def day_top(self, start_ms: int, end_ms: int, limit: int) -> dict[str, int]:
        start = datetime.fromtimestamp(start_ms / 1000, UTC)
        end = datetime.fromtimestamp(end_ms / 1000, UTC)
        return _counts(self._rows(_PG_DAY_TOP, start, end, limit))

    def history(self, user: str) -> History:
        return _history(self._rows(_PG_HISTORY, UUID(user)))

    def viewers_per_movie(self) -> dict[str, int]:
        return _counts(self._rows(_PG_VIEWERS))

    def bytes_on_disk(self) -> int:
        return int(self._rows(_PG_BYTES)[0][0])

    def close(self) -> None:
        for connection in self._connections:
            connection.close()


_DUCK_SCHEMA = """
CREATE TABLE views (
    event_id UUID NOT NULL,
    user_id UUID NOT NULL,
    movie_id UUID NOT NULL,
    movie_time_offset UBIGINT NOT NULL,
    event_time TIMESTAMPTZ NOT NULL,
    received_at TIMESTAMPTZ NOT NULL
);
CREATE INDEX views_user ON views (user_id);
CREATE TABLE latest_view (
    user_id UUID NOT NULL,
    movie_id UUID NOT NULL,
    movie_time_offset UBIGINT NOT NULL,
    event_time TIMESTAMPTZ NOT NULL,
    event_id UUID NOT NULL,
    PRIMARY KEY (user_id, movie_id)
);
"""
_DUCK_APPEND = "INSERT INTO views SELECT * FROM batch"
# ON CONFLICT may update a row once per statement: the batch's latest per pair goes in.
_DUCK_UPSERT_LATEST = """
INSERT INTO latest_view
SELECT user_id, movie_id, arg_max(movie_time_offset, event_time), max(event_time),
       arg_max(event_id, event_time)
FROM batch GROUP BY user_id, movie_id
ON CONFLICT (user_id, movie_id) DO UPDATE
SET movie_time_offset = excluded.movie_time_offset,
    event_time = excluded.event_time,
    event_id = excluded.event_id
WHERE excluded.event_time > latest_view.event_time
"""
_DUCK_POSITION = (
    "SELECT movie_time_offset, epoch_ms(event_time) FROM latest_view"
    " WHERE user_id = $1 AND movie_id = $2"
)
# Redelivered copies are identical rows: count each event once.
_DUCK_DAY_TOP = (
    "SELECT movie_id, count(DISTINCT event_id) AS events FROM views"
    " WHERE event_time >= to_timestamp($1 / 1000) AND event_time < to_timestamp($2 / 1000)"
    " GROUP BY movie_id QUALIFY rank() OVER (ORDER BY events DESC) <= $3"
)
_DUCK_HISTORY = (
    "SELECT DISTINCT movie_id, movie_time_offset, epoch_ms(event_time) FROM views"
    " WHERE user_id = $1"
)
_DUCK_VIEWERS = "SELECT movie_id, count(*) FROM latest_view GROUP BY movie_id"


class DuckDB(Engine):
    name = "duckdb"

    def __init__(self, path: Path, fresh: bool) -> None:
        self._path = path
        self._database = duckdb.connect(str(path))
        self._local = threading.local()
        if fresh:
            self._database.execute(_DUCK_SCHEMA)

    def _cursor(self) -> duckdb.DuckDBPyConnection:
        cursor: duckdb.DuckDBPyConnection | None = getattr(self._local, "cursor", None)
        if cursor is None:
            cursor = self._local.cursor = self._database.cursor()
        return cursor

    @staticmethod
    def encode(batch: Batch) -> Any:
        return batch.arrow()

    def insert(self, payload: Any) -> None:
        cursor = self._cursor()
        cursor.register("batch", payload)
        with self._transaction(cursor):
            cursor.execute(_DUCK_APPEND)
            cursor.execute(_DUCK_UPSERT_LATEST)
        cursor.unregister("batch")

    @staticmethod
    @contextmanager
    def _transaction(cursor: duckdb.DuckDBPyConnection) -> Iterator[None]:
        cursor.begin()
        try:
            yield
        except BaseException:
            cursor.rollback()
            raise
        cursor.commit()

    def finish_load(self) -> None:
        self._cursor().execute("CHECKPOINT")

    def _rows(self, statement: str, *parameters: Any) -> list[Any]:
        return self._cursor().execute(statement, list(parameters)).fetchall()

    def position(self, user: str, movie: str) -> tuple[int, int] | None:
        rows = self._rows(_DUCK_POSITION, UUID(user), UUID(movie))
        return (int(rows[0][0]), int(rows[0][1])) if rows else None

    def day_top(self, start_ms: int, end_ms: int, limit: int) -> dict[str, int]:
        return _counts(self._rows(_DUCK_DAY_TOP, start_ms, end_ms, limit))

    def history(self, user: str) -> History:
        return _history(self._rows(_DUCK_HISTORY, UUID(user)))

    def viewers_per_movie(self) -> dict[str, int]:
        return _counts(self._rows(_DUCK_VIEWERS))

    def bytes_on_disk(self) -> int:
        self._cursor().execute("CHECKPOINT")
        return self._path.stat().st_size

    def close(self) -> None:
        self._database.close()


ENGINE_TYPES: dict[str, type[Engine]] = {
    "clickhouse": ClickHouse,
    "postgres": Postgres,
    "duckdb": DuckDB,
}
ENGINES = tuple(ENGINE_TYPES)


def open_engine(name: str, folder: Path, fresh: bool, postgres: PostgresServer | None) -> Engine:
    """The engine ``name`` storing in ``folder`` (PostgreSQL: in its running ``postgres``)."""
    if name == "clickhouse":
        return ClickHouse(folder, fresh)
    if name == "postgres":
        assert postgres is not None, "PostgreSQL runs as a server the study starts"
        return Postgres(postgres, fresh)
    return DuckDB(folder / "study.duckdb", fresh)
