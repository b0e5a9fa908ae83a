"""DuckDB with Arrow appends, duplicates removed at read time, an upserted latest position."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import duckdb

from loadtest.storage.dataset import Batch
from loadtest.storage.engines import Engine, SqlEngine, SqlReads
from loadtest.storage.postgres import PostgresServer

__all__ = ["ENGINE"]

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


class DuckDB(SqlEngine):
    name = "duckdb"
    reads = SqlReads(_DUCK_POSITION, _DUCK_DAY_TOP, _DUCK_HISTORY, _DUCK_VIEWERS)

    @classmethod
    def open(cls, folder: Path, fresh: bool, postgres: PostgresServer | None) -> Engine:
        return cls(folder / "study.duckdb", fresh)

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

    def bytes_on_disk(self) -> int:
        self._cursor().execute("CHECKPOINT")
        return self._path.stat().st_size

    def close(self) -> None:
        self._database.close()


ENGINE = DuckDB
