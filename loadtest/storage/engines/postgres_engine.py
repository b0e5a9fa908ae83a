"""PostgreSQL 15 as an expert runs an ingest table: binary ``COPY``, key-based idempotency."""

from __future__ import annotations

import threading
from pathlib import Path
from typing import Any

import psycopg

from loadtest.storage.dataset import Batch
from loadtest.storage.engines import Engine, SqlEngine, SqlReads, utc
from loadtest.storage.postgres import PostgresServer

__all__ = ["ENGINE"]

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


class Postgres(SqlEngine):
    name = "postgres"
    reads = SqlReads(_PG_POSITION, _PG_DAY_TOP, _PG_HISTORY, _PG_VIEWERS)

    @classmethod
    def open(cls, folder: Path, fresh: bool, postgres: PostgresServer | None) -> Engine:
        assert postgres is not None, "PostgreSQL runs as a server the study starts"
        return cls(postgres, fresh)

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

    def _day_bounds(self, start_ms: int, end_ms: int) -> tuple[Any, Any]:
        return utc(start_ms), utc(end_ms)

    def bytes_on_disk(self) -> int:
        return int(self._rows(_PG_BYTES)[0][0])

    def close(self) -> None:
        for connection in self._connections:
            connection.close()


ENGINE = Postgres
