"""The read paths of the store: latest position and the most-watched ranking (real engine)."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime

from support import view_record

from clickhouse.migrate import apply_migrations
from clickhouse.store import ViewStore


def _fresh_store(store: ViewStore) -> ViewStore:
    database = f"reads_{uuid.uuid4().hex[:8]}"
    apply_migrations(store.client, database)
    return ViewStore(store.client, database, embedded=False)


def test_position_is_the_latest_event_time_whatever_the_arrival_order(store: ViewStore) -> None:
    reads = _fresh_store(store)
    user, movie = uuid.uuid4(), uuid.uuid4()
    late = view_record(user, movie, 900, datetime(2026, 11, 1, 12, 5, tzinfo=UTC))
    early = view_record(user, movie, 100, datetime(2026, 11, 1, 12, 0, tzinfo=UTC))
    reads.insert_views([late], "t1")
    reads.insert_views([early], "t2")
    position = reads.latest_position(user, movie)
    assert position is not None and position.movie_time_offset == 900
    assert reads.latest_position(user, uuid.uuid4()) is None


def test_most_watched_ranks_by_distinct_viewers_across_inserts(store: ViewStore) -> None:
    reads = _fresh_store(store)
    popular, niche = uuid.uuid4(), uuid.uuid4()
    viewers = [uuid.uuid4() for _ in range(3)]
    moment = datetime(2026, 11, 1, tzinfo=UTC)
    reads.insert_views([view_record(v, popular, 1, moment) for v in viewers], "t1")
    reads.insert_views(
        [view_record(viewers[0], popular, 2, moment), view_record(viewers[0], niche, 1, moment)],
        "t2",
    )
    ranking = reads.most_watched(10)
    assert [(r.movie_id, r.viewers, r.events) for r in ranking] == [
        (popular, 3, 4),
        (niche, 1, 1),
    ]
    assert [r.movie_id for r in reads.most_watched(1)] == [popular]


def test_most_watched_breaks_ties_at_the_limit_by_events_then_id(store: ViewStore) -> None:
    # Viewers come from latest_view and events only for the movies tied at the limit: a movie
    # with more events but tied on viewers must still win the last place.
    reads = _fresh_store(store)
    leader, quiet, busy, other = sorted(uuid.uuid4() for _ in range(4))
    viewers = [uuid.uuid4() for _ in range(3)]
    moment = datetime(2026, 11, 1, tzinfo=UTC)
    records = [view_record(v, leader, 1, moment) for v in viewers]
    for movie in (quiet, busy, other):
        records += [view_record(v, movie, 1, moment) for v in viewers[:2]]
    records += [view_record(viewers[0], busy, 2, moment)]
    reads.insert_views(records, "t1")
    assert [(r.movie_id, r.viewers, r.events) for r in reads.most_watched(2)] == [
        (leader, 3, 3),
        (busy, 2, 3),
    ]
    assert [r.movie_id for r in reads.most_watched(4)] == [leader, busy, quiet, other]
    assert _fresh_store(store).most_watched(3) == []


def test_redelivery_in_other_batches_changes_no_read(store: ViewStore) -> None:
    # A sink that crashed before committing re-reads its records, cut into other batches (other
    # dedup tokens), and some of them again long after: no read may change.
    reads = _fresh_store(store)
    movie, user = uuid.uuid4(), uuid.uuid4()
    moment = datetime(2026, 11, 1, tzinfo=UTC)
    events = [view_record(uuid.uuid4(), movie, n, moment) for n in range(50)]
    events.append(view_record(user, movie, 7, moment))
    reads.insert_views(events, "views-0-0-50")
    before = (reads.most_watched(5), reads.latest_position(user, movie))
    reads.insert_views(events[:20], "views-0-0-19")
    reads.insert_views(events[20:], "views-0-20-50")
    reads.insert_views(events[::7], "views-0-0-49")
    assert (reads.most_watched(5), reads.latest_position(user, movie)) == before
    assert [(r.viewers, r.events) for r in before[0]] == [(51, 51)]
