"""What was acknowledged against what ClickHouse holds: the delivery guarantee, checked.

Pure apart from the SQL it names: the caller runs the queries against a database (in-process,
or in a child process for an embedded directory another process owned) and hands the rows to
``reconcile``.
"""

from __future__ import annotations

import random
from collections.abc import Callable, Iterable, Mapping
from dataclasses import asdict, dataclass
from datetime import UTC, datetime, timedelta
from typing import Any
from uuid import UUID

from functions.events import ViewRecord

__all__ = [
    "LATEST_SQL",
    "RAW_ROWS_SQL",
    "VIEWS_SQL",
    "Reconciliation",
    "SentEvent",
    "read_and_reconcile",
    "reconcile",
    "synthetic_events",
]

# One row per event id left after FINAL, with how many rows it still has (1 unless duplicated),
# and how many rows the table holds before FINAL (redeliveries not yet merged away).
VIEWS_SQL = (
    "SELECT toString(event_id) AS event_id, count() AS copies"
    " FROM {db}.views FINAL GROUP BY event_id"
)
RAW_ROWS_SQL = "SELECT count() AS rows FROM {db}.views"
LATEST_SQL = (
    "SELECT toString(user_id) AS user_id, toString(movie_id) AS movie_id,"
    " toString(event_id) AS event_id FROM {db}.latest_view FINAL"
)

# Runs several queries, returns the rows of each (named columns).
Queries = Callable[[list[str]], list[list[dict[str, Any]]]]


@dataclass(frozen=True, slots=True)
class SentEvent:
    """An event the load sent (whatever the answer), as the model of the expected state."""

    event_id: UUID
    user_id: UUID
    movie_id: UUID
    movie_time_offset: int
    event_time: datetime

    def record(self) -> ViewRecord:
        """The Kafka value the ingest function would produce for this event."""
        return ViewRecord.from_request(
            user_id=self.user_id,
            movie_id=self.movie_id,
            movie_time_offset=self.movie_time_offset,
            received_at=datetime.now(UTC),
            event_time=self.event_time,
            event_id=self.event_id,
        )


def synthetic_events(
    count: int, users: int, movies: int, seed: int | None = None
) -> list[SentEvent]:
    """``count`` events over ``users`` x ``movies`` pairs, sent out of ``event_time`` order.

    Every event has its own millisecond, so each pair has exactly one latest event.
    """
    rng = random.Random(seed)
    user_ids = [UUID(int=rng.getrandbits(128), version=4) for _ in range(users)]
    movie_ids = [UUID(int=rng.getrandbits(128), version=4) for _ in range(movies)]
    # Recent enough for the ingest function's event-time age bound, whatever the day of the run.
    start = datetime.now(UTC).replace(microsecond=0) - timedelta(days=1)
    moments = rng.sample(range(count * 10), count)  # distinct, shuffled
    return [
        SentEvent(
            event_id=UUID(int=rng.getrandbits(128), version=4),
            user_id=rng.choice(user_ids),
            movie_id=rng.choice(movie_ids),
            movie_time_offset=moment,
            event_time=start + timedelta(milliseconds=moment),
        )
        for moment in moments
    ]


@dataclass(frozen=True, slots=True)
class Reconciliation:
    acknowledged: int
    found: int
    lost: int
    duplicates_after_final: int
    unacknowledged_found: int
    rows_before_final: int
    wrong_latest_positions: int
    pairs_checked: int

    def as_dict(self) -> dict[str, int]:
        return asdict(self)

    @property
    def holds(self) -> bool:
        """The promise: nothing acknowledged lost, nothing doubled, every position the latest."""
        return (
            self.lost == 0
            and self.duplicates_after_final == 0
            and not (self.wrong_latest_positions)
        )


def reconcile(
    sent: Mapping[UUID, SentEvent],
    acknowledged: Iterable[UUID],
    views_rows: Iterable[Mapping[str, Any]],
    latest_rows: Iterable[Mapping[str, Any]],
    rows_before_final: int,
) -> Reconciliation:
    """Compare the acknowledged events with ``views FINAL`` and the latest-position model.

    The model of a (user, movie) is its event with the greatest ``event_time`` among those that
    were acknowledged or are stored: an event answered with an error may still have reached
    Kafka (the ack was lost, not the record), and then it rightly counts. ``sent`` must not hold
    two events of one (user, movie) with the same ``event_time``.
    """
    copies = {UUID(str(row["event_id"])): int(row["copies"]) for row in views_rows}
    acked = set(acknowledged)
    stored = set(copies)
    latest_model: dict[tuple[UUID, UUID], SentEvent] = {}
    for event_id in (acked | stored) & sent.keys():
        event = sent[event_id]
        pair = (event.user_id, event.movie_id)
        best = latest_model.get(pair)
        if best is None or event.event_time > best.event_time:
            latest_model[pair] = event
    latest_found = {
        (UUID(str(row["user_id"])), UUID(str(row["movie_id"]))): UUID(str(row["event_id"]))
        for row in latest_rows
    }
    wrong = sum(
        1 for pair, event in latest_model.items() if latest_found.get(pair) != event.event_id
    )
    return Reconciliation(
        acknowledged=len(acked),
        found=len(acked & stored),
        lost=len(acked - stored),
        duplicates_after_final=sum(n - 1 for n in copies.values() if n > 1),
        unacknowledged_found=len((stored & sent.keys()) - acked),
        rows_before_final=rows_before_final,
        wrong_latest_positions=wrong,
        pairs_checked=len(latest_model),
    )


def read_and_reconcile(
    queries: Queries, database: str, sent: Mapping[UUID, SentEvent], acknowledged: Iterable[UUID]
) -> Reconciliation:
    """Read ``database`` with ``queries`` and reconcile it with the load."""
    views, latest, raw = queries(
        [sql.format(db=database) for sql in (VIEWS_SQL, LATEST_SQL, RAW_ROWS_SQL)]
    )
    return reconcile(sent, acknowledged, views, latest, int(raw[0]["rows"]))
