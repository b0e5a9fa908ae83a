"""ClickHouse as the product runs it: migrations, the sink's insert, ``clickhouse/queries.py``."""

from __future__ import annotations

from pathlib import Path
from typing import Any
from uuid import UUID

from clickhouse import queries
from clickhouse.migrate import apply_migrations
from clickhouse.store import ViewStore
from loadtest.storage.dataset import Batch
from loadtest.storage.engines import Engine, History, counts, history, ms, utc
from loadtest.storage.postgres import PostgresServer

__all__ = ["ENGINE"]


class ClickHouse(Engine):
    name = "clickhouse"
    _DATABASE = "study"

    @classmethod
    def open(cls, folder: Path, fresh: bool, postgres: PostgresServer | None) -> Engine:
        return cls(folder, fresh)

    def __init__(self, folder: Path, fresh: bool) -> None:
        # The embedded engine answers one statement at a time: ViewStore serialises them.
        self._store = ViewStore.open(f"chdb://{folder}", self._DATABASE)
        if fresh:
            apply_migrations(self._store.client, self._DATABASE)

    @staticmethod
    def encode(batch: Batch) -> Any:
        return batch.kafka_values(), f"study-{batch.first}-{batch.first + len(batch) - 1}"

    def insert(self, payload: Any) -> None:
        lines, token = payload
        self._store.insert_canonical_lines(lines, token)

    def finish_load(self) -> None:
        """Nothing: merges run in the background, as in production."""

    def position(self, user: str, movie: str) -> tuple[int, int] | None:
        found = self._store.latest_position(UUID(user), UUID(movie))
        return None if found is None else (found.movie_time_offset, ms(found.event_time))

    def day_top(self, start_ms: int, end_ms: int, limit: int) -> dict[str, int]:
        start, end = utc(start_ms), utc(end_ms)
        return counts(
            self._store.rows(queries.MOST_WATCHED_ON_DAY, start=start, end=end, limit=limit)
        )

    def history(self, user: str) -> History:
        rows = self._store.rows(queries.VIEWER_HISTORY, user_id=UUID(user))
        return history((movie, offset, ms(time)) for movie, offset, time in rows)

    def viewers_per_movie(self) -> dict[str, int]:
        return counts(self._store.rows(queries.VIEWERS_PER_MOVIE))

    def bytes_on_disk(self) -> int:
        return int(self._store.rows(queries.DATABASE_BYTES_ON_DISK, database=self._DATABASE)[0][0])

    def close(self) -> None:
        self._store.client.close()


ENGINE = ClickHouse
