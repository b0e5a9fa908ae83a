"""The ClickHouse side: insert view events, read a viewer's position and the most-watched movies.

The same code runs on the embedded engine (``chdb://``) and on a server (``http://``): only the
DSN differs. Driver errors are re-raised as one of two outcomes, decided here once:
``StoreUnavailable`` (ClickHouse cannot take anything now: retry later) and, for the fast-path
insert only, ``RecordsRefused`` (ClickHouse is up and refused the records themselves). The
statements are in ``clickhouse/queries.py``.

On a cluster (``cluster`` given: the migrations were rendered for it) the same tables are
``Distributed`` ones; inserts add ``queries.CLUSTER_INSERT_SETTINGS`` so that an insert answers
only once each shard stored its rows, and reads are unchanged (docs/clickhouse-cluster.md).
"""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from datetime import datetime
from operator import attrgetter
from typing import Any
from uuid import UUID

import clickhouse_connect
from clickhouse_connect.driver.client import Client
from clickhouse_connect.driver.exceptions import ClickHouseError

from clickhouse import queries
from functions.errors import RecordsRefused, StoreUnavailable
from functions.events import ViewRecord

__all__ = ["MovieViewers", "Position", "ViewStore", "connect"]

_COLUMN_NAMES = [name for name, _ in queries.VIEW_COLUMNS]
_COLUMN_TYPES = [ch_type for _, ch_type in queries.VIEW_COLUMNS]
_COLUMN_GETTERS = [attrgetter(name) for name in _COLUMN_NAMES]

# Server error codes that say "not now" rather than "not these records": the table or database is
# missing (detached, not migrated yet), the server is overloaded, read-only or refusing the user.
# A driver error without a server code is a transport failure (refused connection, timeout).
# Any other code on the fast path means ClickHouse judged the lines; refusing them again would
# stall the partition, so the unknown case is the one that takes the slower, validated path.
_UNAVAILABLE_CODES = frozenset(
    {
        60,  # UNKNOWN_TABLE
        81,  # UNKNOWN_DATABASE
        159,  # TIMEOUT_EXCEEDED
        164,  # READONLY
        192,  # UNKNOWN_USER
        202,  # TOO_MANY_SIMULTANEOUS_QUERIES
        209,  # SOCKET_TIMEOUT
        210,  # NETWORK_ERROR
        218,  # TABLE_IS_DROPPED
        236,  # ABORTED
        225,  # NO_ZOOKEEPER
        241,  # MEMORY_LIMIT_EXCEEDED
        242,  # TABLE_IS_READ_ONLY
        243,  # NOT_ENOUGH_SPACE
        252,  # TOO_MANY_PARTS
        279,  # ALL_CONNECTION_TRIES_FAILED
        285,  # TOO_FEW_LIVE_REPLICAS (insert quorum)
        286,  # UNSATISFIED_QUORUM_FOR_PREVIOUS_WRITE
        319,  # UNKNOWN_STATUS_OF_INSERT (retried with the same token: dropped if it landed)
        394,  # QUERY_WAS_CANCELLED
        497,  # ACCESS_DENIED
        516,  # AUTHENTICATION_FAILED
        999,  # KEEPER_EXCEPTION
    }
)


@dataclass(frozen=True, slots=True)
class Position:
    """Where a viewer last was in a movie."""

    movie_id: UUID
    movie_time_offset: int
    event_time: datetime


@dataclass(frozen=True, slots=True)
class MovieViewers:
    """A row of the most-watched ranking."""

    movie_id: UUID
    viewers: int
    events: int


def connect(dsn: str) -> Client:
    """A clickhouse-connect client for a ``chdb://`` or ``http(s)://`` DSN."""
    # Over HTTP, no session id: concurrent queries of one client must not collide on a session.
    options: dict[str, Any] = {} if dsn.startswith("chdb:") else {"autogenerate_session_id": False}
    try:
        return clickhouse_connect.get_client(dsn=dsn, **options)
    except ClickHouseError as exc:
        raise StoreUnavailable(f"cannot reach ClickHouse at {_redact(dsn)}: {exc}") from exc


def _redact(dsn: str) -> str:
    scheme, sep, rest = dsn.partition("://")
    return f"{scheme}{sep}{rest.rpartition('@')[2]}"


def _refused_records(exc: ClickHouseError) -> bool:
    code = getattr(exc, "code", None)
    return code is not None and code not in _UNAVAILABLE_CODES


class ViewStore:
    """Tables ``views`` and ``latest_view`` of one database."""

    def __init__(
        self, client: Client, database: str, embedded: bool, cluster: str | None = None
    ) -> None:
        self._client = client
        self._db = database
        self._insert_settings = dict(queries.CLUSTER_INSERT_SETTINGS) if cluster else {}
        self._position_settings = dict(queries.CLUSTER_POSITION_SETTINGS) if cluster else {}
        # The embedded engine lives in this process; one query at a time keeps it predictable.
        self._exclusive: contextlib.AbstractContextManager[object] = (
            threading.Lock() if embedded else contextlib.nullcontext()
        )

    @classmethod
    def open(cls, dsn: str, database: str, cluster: str | None = None) -> ViewStore:
        return cls(connect(dsn), database, embedded=dsn.startswith("chdb://"), cluster=cluster)

    @property
    def client(self) -> Client:
        return self._client

    @property
    def database(self) -> str:
        return self._db

    def answers(self, timeout_seconds: float) -> bool:
        """Whether ClickHouse answers a ping now (blocking)."""
        with self._exclusive:
            return bool(self._client.ping(timeout_seconds))

    def command(self, statement: str) -> None:
        """Run one statement of ``clickhouse/queries.py`` on this database."""
        with self._calling(statement):
            self._client.command(statement.format(db=self._db))

    def rows(self, statement: str, **parameters: Any) -> Sequence[Sequence[Any]]:
        """The rows of one query of ``clickhouse/queries.py`` on this database."""
        with self._calling(statement):
            query = self._client.query(statement.format(db=self._db), parameters=parameters)
            rows: Sequence[Sequence[Any]] = query.result_rows
            return rows

    @contextlib.contextmanager
    def _calling(self, what: str, refusable: bool = False) -> Iterator[None]:
        with self._exclusive:
            try:
                yield
            except ClickHouseError as exc:
                if refusable and _refused_records(exc):
                    raise RecordsRefused(f"{what} refused: {exc}") from exc
                raise StoreUnavailable(f"{what} failed: {exc}") from exc

    def insert_views(self, records: Sequence[ViewRecord], dedup_token: str) -> None:
        """Insert events column-wise; a retry with the same token is dropped by ClickHouse."""
        columns = [list(map(getter, records)) for getter in _COLUMN_GETTERS]
        with self._calling("insert into views"):
            self._client.insert(
                queries.VIEWS_TABLE.format(db=self._db),
                columns,
                column_names=_COLUMN_NAMES,
                column_type_names=_COLUMN_TYPES,
                column_oriented=True,
                settings={**self._insert_settings, "insert_deduplication_token": dedup_token},
            )

    def insert_canonical_lines(self, lines: bytes, dedup_token: str) -> None:
        """Insert newline-separated view records as the ingest function writes them.

        ClickHouse checks and parses each line (``canonical_view_lines`` in the migrations);
        any other line fails the insert with ``RecordsRefused``, a ClickHouse that cannot take
        inserts with ``StoreUnavailable``. Lines of the insert blocks before the failing one
        (``max_insert_block_size``, ~1M lines) may stay stored.
        """
        with self._calling("insert into views", refusable=True):
            self._client.raw_insert(
                queries.CANONICAL_LINES_TABLE.format(db=self._db),
                insert_block=lines,
                fmt="LineAsString",
                settings={
                    **self._insert_settings,
                    "insert_deduplication_token": dedup_token,
                    # The token is checked where the rows land: in views, behind the view.
                    "deduplicate_blocks_in_dependent_materialized_views": 1,
                },
            )

    def latest_position(self, user_id: UUID, movie_id: UUID) -> Position | None:
        """The viewer's event with the latest ``event_time`` for the movie, if any."""
        with self._calling("position lookup"):
            rows = self._client.query(
                queries.LATEST_POSITION.format(db=self._db),
                parameters={"user_id": user_id, "movie_id": movie_id},
                settings=self._position_settings,
            ).result_rows
        if not rows:
            return None
        offset, event_time = rows[0]
        return Position(movie_id, int(offset), event_time)

    def most_watched(self, limit: int) -> list[MovieViewers]:
        """Movies ranked by distinct viewers, then events, then id; exact under redelivery.

        Viewers are counted in ``latest_view`` (one row per viewer and movie: on the bench's
        10M events, ~60 times fewer rows than ``views``). Events need ``views FINAL``, so they are
        counted only for the movies that can still make the ranking: those with at least as many
        viewers as the ``limit``-th (on the bench machine ~0.15 s instead of ~0.5 s for all).
        """
        with self._calling("most-watched aggregate"):
            viewers = self._counts_by_movie(queries.MOST_WATCHED_VIEWERS, {"limit": limit})
            events = self._counts_by_movie(queries.MOST_WATCHED_EVENTS, {"movies": list(viewers)})
        ranking = [
            MovieViewers(movie_id, count, events.get(movie_id, 0))
            for movie_id, count in viewers.items()
        ]
        ranking.sort(key=lambda movie: (-movie.viewers, -movie.events, movie.movie_id))
        return ranking[:limit]

    def _counts_by_movie(self, query: str, parameters: dict[str, Any]) -> dict[UUID, int]:
        rows = self._client.query(query.format(db=self._db), parameters=parameters).result_rows
        return {movie_id: int(count) for movie_id, count in rows}
