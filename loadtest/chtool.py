"""ClickHouse chores of the bench, each in its own process (one process per chDB directory):

    python -m loadtest.chtool generate --rows N   # migrate, then N synthetic events, with progress
    python -m loadtest.chtool count               # print stored events, viewers and positions

The store comes from the environment (``CLICKHOUSE_DSN``, ``CLICKHOUSE_DATABASE``). As players
do, events come in sessions: ``SESSION_EVENTS`` heartbeats, 10 s of movie apart, of one viewer
in one movie.
Synthetic event ``n`` belongs to session ``s = n // SESSION_EVENTS``, viewer ``s % VIEWERS``
watching movie ``s % MOVIES`` (``synthetic_ids``), so the bench can ask for positions that exist.
"""

from __future__ import annotations

import argparse
import sys
import time
import uuid

from clickhouse.migrate import apply_migrations
from clickhouse.store import ViewStore
from functions.settings import get_settings

__all__ = ["MOVIES", "VIEWERS", "synthetic_ids"]

VIEWERS = 100_000
MOVIES = 997  # prime to VIEWERS: (viewer, movie) pairs repeat only every 99.7M sessions
SESSION_EVENTS = 60  # ten minutes of heartbeats
_CHUNK = 1_000_000
# The SQL twin of synthetic_ids: '00000000-0000-4000-8000-' / '...-9000-' + 12 hex digits.
_ID_SQL = "toUUID(concat('00000000-0000-4000-{prefix}-', leftPad(lower(hex({n})), 12, '0')))"


def synthetic_ids(n: int) -> tuple[uuid.UUID, uuid.UUID]:
    """(viewer, movie) of synthetic event ``n``."""
    session = n // SESSION_EVENTS
    return (
        uuid.UUID(f"00000000-0000-4000-8000-{session % VIEWERS:012x}"),
        uuid.UUID(f"00000000-0000-4000-9000-{session % MOVIES:012x}"),
    )


def generate(store: ViewStore, rows: int) -> None:
    """``rows`` events inside ClickHouse (INSERT ... SELECT FROM numbers), a chunk at a time."""
    session = f"intDiv(number, {SESSION_EVENTS})"
    viewer = _ID_SQL.format(prefix="8000", n=f"{session} % {VIEWERS}")
    movie = _ID_SQL.format(prefix="9000", n=f"{session} % {MOVIES}")
    offset = f"({session} * 7919) % 10800000 + number % {SESSION_EVENTS} * 10000"
    started = time.monotonic()
    for first in range(0, rows, _CHUNK):
        count = min(_CHUNK, rows - first)
        store.client.command(
            f"INSERT INTO {store.database}.views"
            " (event_id, user_id, movie_id, movie_time_offset, event_time, received_at)"
            f" SELECT generateUUIDv4(number), {viewer}, {movie}, {offset},"
            f" now64(3) - toIntervalMillisecond({rows} - number),"
            f" now64(3) - toIntervalMillisecond({rows} - number)"
            f" FROM numbers({first}, {count})"
        )
        done = first + count
        rate = done / (time.monotonic() - started)
        sys.stderr.write(f"  generated {done:,}/{rows:,} events ({rate:,.0f}/s)\n")
        sys.stderr.flush()


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m loadtest.chtool")
    commands = parser.add_subparsers(dest="command", required=True)
    commands.add_parser("generate").add_argument("--rows", type=int, required=True)
    commands.add_parser("count")
    args = parser.parse_args()
    settings = get_settings()
    store = ViewStore.open(settings.clickhouse_dsn, settings.clickhouse_database)
    apply_migrations(store.client, store.database)
    if args.command == "generate":
        generate(store, args.rows)
    else:
        events, latest = (
            store.client.query(f"SELECT count() FROM {store.database}.{table} FINAL").result_rows[
                0
            ][0]
            for table in ("views", "latest_view")
        )
        sys.stdout.write(f'{{"events": {events}, "positions": {latest}}}\n')


if __name__ == "__main__":
    main()
