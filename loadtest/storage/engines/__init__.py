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

import importlib
from abc import ABC, abstractmethod
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from uuid import UUID

from loadtest.storage.dataset import Batch
from loadtest.storage.postgres import PostgresServer

__all__ = [
    "ENGINES",
    "Engine",
    "History",
    "SqlEngine",
    "SqlReads",
    "counts",
    "engine_type",
    "history",
    "ms",
    "utc",
]

History = list[tuple[str, int, int]]  # (movie, offset, event time ms), by time


def ms(value: datetime) -> int:
    return round(value.timestamp() * 1000)


def utc(milliseconds: int) -> datetime:
    """The inverse of ``ms``: a time in ms since the epoch as an aware UTC datetime."""
    return datetime.fromtimestamp(milliseconds / 1000, UTC)


def counts(rows: Any) -> dict[str, int]:
    return {str(movie): int(count) for movie, count in rows}


def history(rows: Any) -> History:
    return sorted((str(movie), int(offset), int(ms)) for movie, offset, ms in rows)


class Engine(ABC):
    """One store: a schema, an insert, the four reads; safe to call from two threads."""

    name: str

    @classmethod
    @abstractmethod
    def open(cls, folder: Path, fresh: bool, postgres: PostgresServer | None) -> Engine:
        """The store in ``folder`` (PostgreSQL: in the running ``postgres``); ``fresh``: create
        the schema first."""

    @staticmethod
    @abstractmethod
    def encode(batch: Batch) -> Any:
        """The batch as this engine's client sends it (not timed: the sink holds it so)."""

    @abstractmethod
    def insert(self, payload: Any) -> None: ...

    @abstractmethod
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


@dataclass(frozen=True)
class SqlReads:
    """The four reads of an engine queried through a DB-API cursor, positional parameters:
    (user, movie), (day start, day end, limit), (user), ()."""

    position: str
    day_top: str
    history: str
    viewers: str


class SqlEngine(Engine):
    """An engine whose reads are its ``reads`` statements, run by ``_rows``."""

    reads: SqlReads

    @abstractmethod
    def _rows(self, statement: str, *parameters: Any) -> list[Any]: ...

    def _day_bounds(self, start_ms: int, end_ms: int) -> tuple[Any, Any]:
        """The day's bounds as the ``day_top`` statement takes them."""
        return start_ms, end_ms

    def position(self, user: str, movie: str) -> tuple[int, int] | None:
        rows = self._rows(self.reads.position, UUID(user), UUID(movie))
        return (int(rows[0][0]), int(rows[0][1])) if rows else None

    def day_top(self, start_ms: int, end_ms: int, limit: int) -> dict[str, int]:
        return counts(self._rows(self.reads.day_top, *self._day_bounds(start_ms, end_ms), limit))

    def history(self, user: str) -> History:
        return history(self._rows(self.reads.history, UUID(user)))

    def viewers_per_movie(self) -> dict[str, int]:
        return counts(self._rows(self.reads.viewers))


# Each engine's module imports its driver: a worker process loads only its own.
_MODULES = {
    "clickhouse": "loadtest.storage.engines.clickhouse_engine",
    "postgres": "loadtest.storage.engines.postgres_engine",
    "duckdb": "loadtest.storage.engines.duckdb_engine",
}
ENGINES = tuple(_MODULES)


def engine_type(name: str) -> type[Engine]:
    engine: type[Engine] = importlib.import_module(_MODULES[name]).ENGINE
    return engine
