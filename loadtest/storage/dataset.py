"""The generated view events every engine receives, in the order the sink would deliver them.

Viewers watch in sessions (a heartbeat every 10 s, ~60 per session on average); movies are
picked Zipf-like (a few titles draw most of the viewing); events reach the store in arrival
order, so players' offline queues make some arrive hours late (out of order), and runs of
records are delivered twice, as a sink does after a rewind. Every engine gets the same batches,
each encoded the way its client sends them best: the Kafka values themselves for ClickHouse (the
sink's fast path), ``COPY`` binary rows for PostgreSQL, an Arrow table for DuckDB.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import numpy.typing as npt
import pyarrow as pa

__all__ = ["Batch", "Dataset", "Plan", "generate", "make_plan"]

SINK_BATCH = 50_000  # the sink's SINK_BATCH_MAX_RECORDS
SINK_MAX_WAIT_S = 0.5  # the sink's SINK_BATCH_MAX_WAIT_MS: batch size at a steady rate
FIRST_DAY_MS = 1_795_392_000_000  # 2026-11-22T00:00:00Z
DAYS = 7
DAY_MS = 86_400_000
HEARTBEAT_MS = 10_000
MEAN_SESSION_EVENTS = 60
MOVIE_ZIPF_EXPONENT = 1.1
REDELIVERED_SHARE = 0.02  # of deliveries: copies of records already delivered
REDELIVERED_RUN = 1_000  # records a rewound sink reads again
LATE_SHARE = 0.03  # of events: queued offline for minutes to hours
PG_EPOCH_MS = 946_684_800_000  # 2000-01-01: PostgreSQL's binary timestamps count from it

Array = npt.NDArray[np.int64]
IdArray = npt.NDArray[np.uint8]  # n x 16 bytes

_ARRAYS = ("event_id", "user", "movie", "offset", "event_time", "received_at", "delivery")


@dataclass(frozen=True)
class Dataset:
    """Unique events (columns) and the order they are delivered in (indexes, with repeats)."""

    event_id: IdArray
    user: Array
    movie: Array
    offset: Array
    event_time: Array  # ms since the epoch, unique per (user, movie)
    received_at: Array
    delivery: Array  # index of the event delivered at each position
    user_ids: IdArray
    movie_ids: IdArray

    def save(self, folder: Path) -> None:
        for name in (*_ARRAYS, "user_ids", "movie_ids"):
            np.save(folder / f"{name}.npy", getattr(self, name))

    @classmethod
    def load(cls, folder: Path) -> Dataset:
        return cls(
            **{
                name: np.load(folder / f"{name}.npy")
                for name in (*_ARRAYS, "user_ids", "movie_ids")
            }
        )

    def batches(self, start: int, stop: int, size: int) -> Iterator[Batch]:
        for first in range(start, stop, size):
            yield Batch(self, np.asarray(self.delivery[first : min(first + size, stop)]), first)


def _uuid_text(ids: IdArray) -> list[str]:
    text = [row.hex() for row in (bytes(b) for b in ids)]
    return [f"{h[:8]}-{h[8:12]}-{h[12:16]}-{h[16:20]}-{h[20:]}" for h in text]


def _iso(ms: Array) -> list[str]:
    return [f"{t}Z" for t in np.datetime_as_string(ms.astype("datetime64[ms]"), unit="ms")]


_PG_ROW = np.dtype(
    [
        ("fields", ">i2"),
        ("event_id_len", ">i4"),
        ("event_id", "V16"),
        ("user_id_len", ">i4"),
        ("user_id", "V16"),
        ("movie_id_len", ">i4"),
        ("movie_id", "V16"),
        ("offset_len", ">i4"),
        ("offset", ">i8"),
        ("event_time_len", ">i4"),
        ("event_time", ">i8"),
        ("received_at_len", ">i4"),
        ("received_at", ">i8"),
    ]
)
_PG_HEADER = b"PGCOPY\n\xff\r\n\x00" + bytes(8)  # signature, flags, no header extension
_PG_TRAILER = b"\xff\xff"


@dataclass(frozen=True)
class Batch:
    """One insert: the events delivered at positions ``first`` … ``first + len - 1``."""

    data: Dataset
    events: Array
    first: int

    def __len__(self) -> int:
        return len(self.events)

    def _ids(self) -> tuple[IdArray, IdArray, IdArray]:
        data, events = self.data, self.events
        return (
            np.asarray(data.event_id[events]),
            np.asarray(data.user_ids[data.user[events]]),
            np.asarray(data.movie_ids[data.movie[events]]),
        )

    def kafka_values(self) -> bytes:
        """The records as the ingest function writes them to Kafka, one per line."""
        data, events = self.data, self.events
        event_ids, user_ids, movie_ids = (_uuid_text(ids) for ids in self._ids())
        offsets = data.offset[events].tolist()
        lines = [
            f'{{"schema_version":1,"event_id":"{e}","user_id":"{u}","movie_id":"{m}",'
            f'"movie_time_offset":{o},"event_time":"{t}","received_at":"{r}"}}'
            for e, u, m, o, t, r in zip(
                event_ids,
                user_ids,
                movie_ids,
                offsets,
                _iso(data.event_time[events]),
                _iso(data.received_at[events]),
                strict=True,
            )
        ]
        return "\n".join(lines).encode()

    def copy_binary(self) -> bytes:
        """PostgreSQL ``COPY … (FORMAT binary)`` of (event_id, user_id, movie_id, offset,
        event_time, received_at): fixed-width rows, so numpy writes them in one go."""
        rows = np.zeros(len(self), dtype=_PG_ROW)
        rows["fields"] = 6
        for name, width in (("event_id", 16), ("user_id", 16), ("movie_id", 16)):
            rows[f"{name}_len"] = width
        for name in ("offset", "event_time", "received_at"):
            rows[f"{name}_len"] = 8
        event_ids, user_ids, movie_ids = self._ids()
        rows["event_id"] = event_ids.view("V16").ravel()
        rows["user_id"] = user_ids.view("V16").ravel()
        rows["movie_id"] = movie_ids.view("V16").ravel()
        rows["offset"] = self.data.offset[self.events]
        rows["event_time"] = (self.data.event_time[self.events] - PG_EPOCH_MS) * 1000
        rows["received_at"] = (self.data.received_at[self.events] - PG_EPOCH_MS) * 1000
        return _PG_HEADER + rows.tobytes() + _PG_TRAILER

    def arrow(self) -> pa.Table:
        """An Arrow table with UUID and UTC timestamp columns."""

        def uuids(ids: IdArray) -> pa.ExtensionArray:
            storage = pa.FixedSizeBinaryArray.from_buffers(
                pa.binary(16), len(ids), [None, pa.py_buffer(np.ascontiguousarray(ids))]
            )
            return pa.ExtensionArray.from_storage(pa.uuid(), storage)

        def times(ms: Array) -> pa.Array:
            return pa.array(ms, type=pa.int64()).cast(pa.timestamp("ms", tz="UTC"))

        event_ids, user_ids, movie_ids = self._ids()
        events = self.events
        return pa.table(
            {
                "event_id": uuids(event_ids),
                "user_id": uuids(user_ids),
                "movie_id": uuids(movie_ids),
                "movie_time_offset": pa.array(self.data.offset[events], type=pa.uint64()),
                "event_time": times(self.data.event_time[events]),
                "received_at": times(self.data.received_at[events]),
            }
        )


def generate(deliveries: int, seed: int = 21) -> Dataset:
    """``deliveries`` records: about 2 % of them redeliveries of records already sent."""
    rng = np.random.default_rng(seed)
    unique = max(1, round(deliveries / (1 + REDELIVERED_SHARE)))
    users, movies = max(100, unique // 100), max(50, unique // 1_000)

    lengths = rng.geometric(1 / MEAN_SESSION_EVENTS, size=unique // MEAN_SESSION_EVENTS * 2 + 10)
    sessions = int(np.searchsorted(np.cumsum(lengths), unique)) + 1
    lengths = lengths[:sessions]
    lengths[-1] -= int(lengths.sum()) - unique
    session = np.repeat(np.arange(sessions), lengths)
    beat = np.arange(unique) - np.repeat(np.cumsum(lengths) - lengths, lengths)

    movie_weights = 1 / np.arange(1, movies + 1) ** MOVIE_ZIPF_EXPONENT
    session_user = rng.integers(0, users, sessions)
    session_movie = rng.choice(movies, sessions, p=movie_weights / movie_weights.sum())
    session_start = FIRST_DAY_MS + rng.integers(0, DAYS * DAY_MS, sessions)
    session_offset = rng.integers(0, 5_400_000, sessions)

    user, movie = session_user[session], session_movie[session]
    event_time = session_start[session] + beat * HEARTBEAT_MS + rng.integers(0, 1_000, unique)
    _make_unique_per_viewer_and_movie(user, movie, event_time)
    offset = session_offset[session] + beat * HEARTBEAT_MS
    delay = rng.integers(20, 300, unique)
    late = rng.random(unique) < LATE_SHARE
    delay[late] = rng.integers(60_000, 6 * 3_600_000, int(late.sum()))
    received_at = event_time + delay
    arrival = np.argsort(received_at, kind="stable")

    return Dataset(
        event_id=rng.integers(0, 256, (unique, 16), dtype=np.uint8),
        user=user,
        movie=movie,
        offset=offset,
        event_time=event_time,
        received_at=received_at,
        delivery=_with_redeliveries(arrival, deliveries - unique, rng),
        user_ids=rng.integers(0, 256, (users, 16), dtype=np.uint8),
        movie_ids=rng.integers(0, 256, (movies, 16), dtype=np.uint8),
    )


def _make_unique_per_viewer_and_movie(user: Array, movie: Array, event_time: Array) -> None:
    """Two events of one viewer and movie never share a millisecond: "the latest" is then one
    event in every engine (ClickHouse keeps either of two equal versions)."""
    while True:
        order = np.lexsort((event_time, movie, user))
        same = (
            (user[order][1:] == user[order][:-1])
            & (movie[order][1:] == movie[order][:-1])
            & (event_time[order][1:] == event_time[order][:-1])
        )
        if not same.any():
            return
        event_time[order[1:][same]] += 1


def _with_redeliveries(arrival: Array, copies: int, rng: np.random.Generator) -> Array:
    """Runs of records delivered again a little later, as after a sink's rewind."""
    if copies <= 0:
        return arrival
    runs = -(-copies // REDELIVERED_RUN)
    starts = rng.integers(0, len(arrival), runs)
    copied = (starts[:, None] + np.arange(REDELIVERED_RUN)).ravel()[:copies] % len(arrival)
    later = np.repeat(rng.integers(REDELIVERED_RUN, 20 * SINK_BATCH, runs), REDELIVERED_RUN)
    position = np.concatenate(
        [np.arange(len(arrival), dtype=np.float64), copied + later[:copies] + 0.5]
    )
    return np.concatenate([arrival, arrival[copied]])[np.argsort(position, kind="stable")]


@dataclass(frozen=True)
class Plan:
    """What every engine is asked, the same for all."""

    positions: list[tuple[str, str]]  # (user, movie): most watched, a few never watched
    histories: list[str]
    day_start_ms: int
    top: int
    bulk_rows: int  # deliveries loaded in sink-sized batches; the rest at a steady rate
    steady_rate: int  # rows per second while reads run

    def save(self, path: Path) -> None:
        path.write_text(json.dumps(asdict(self)))

    @classmethod
    def load(cls, path: Path) -> Plan:
        fields = json.loads(path.read_text())
        fields["positions"] = [tuple(pair) for pair in fields["positions"]]
        return cls(**fields)


def make_plan(
    data: Dataset, lookups: int, histories: int, steady_share: float, steady_rate: int
) -> Plan:
    rng = np.random.default_rng(7)
    picked = rng.integers(0, len(data.user), lookups)
    users = np.asarray(data.user[picked])
    movies = np.asarray(data.movie[picked])
    never = rng.random(lookups) < 0.05  # a viewer opening a movie for the first time
    movies[never] = rng.integers(0, len(data.movie_ids), int(never.sum()))
    user_text = _uuid_text(np.asarray(data.user_ids[users]))
    movie_text = _uuid_text(np.asarray(data.movie_ids[movies]))
    history_users = np.asarray(data.user[rng.integers(0, len(data.user), histories)])
    return Plan(
        positions=list(zip(user_text, movie_text, strict=True)),
        histories=_uuid_text(np.asarray(data.user_ids[history_users])),
        day_start_ms=FIRST_DAY_MS + 3 * DAY_MS,
        top=10,
        bulk_rows=len(data.delivery) - round(len(data.delivery) * steady_share),
        steady_rate=steady_rate,
    )
