"""The checkers of the reliability runs, checked: they must see loss, doubles, stale positions."""

from __future__ import annotations

from reconcile import reconcile, synthetic_events
from soak import MIB, RssSample, SoakConfig, judge


def _rows(copies: dict[str, int]) -> list[dict[str, object]]:
    return [{"event_id": event_id, "copies": n} for event_id, n in copies.items()]


def test_reconcile_counts_loss_duplicates_and_stale_positions() -> None:
    events = synthetic_events(50, users=2, movies=2, seed=3)
    sent = {e.event_id: e for e in events}
    latest = {}
    for e in events:
        pair = (e.user_id, e.movie_id)
        if pair not in latest or e.event_time > latest[pair].event_time:
            latest[pair] = e
    latest_rows = [
        {"user_id": u, "movie_id": m, "event_id": e.event_id} for (u, m), e in latest.items()
    ]
    everything = {str(e.event_id): 1 for e in events}

    perfect = reconcile(sent, sent, _rows(everything), latest_rows, 50)
    assert perfect.holds and (perfect.found, perfect.pairs_checked) == (50, len(latest))

    lost_one = dict(everything)
    newest = max(events, key=lambda e: e.event_time)
    del lost_one[str(newest.event_id)]
    damaged = reconcile(sent, sent, _rows(lost_one | {str(events[0].event_id): 2}), latest_rows, 51)
    assert (damaged.lost, damaged.duplicates_after_final) == (1, 1)
    assert not damaged.holds

    stale = [r for r in latest_rows if r["event_id"] != newest.event_id]
    assert reconcile(sent, sent, _rows(everything), stale, 50).wrong_latest_positions == 1


def test_an_unacknowledged_event_that_was_stored_counts_in_the_model() -> None:
    events = synthetic_events(2, users=1, movies=1, seed=4)
    older, newer = sorted(events, key=lambda e: e.event_time)
    stored = _rows({str(older.event_id): 1, str(newer.event_id): 1})
    latest = [{"user_id": newer.user_id, "movie_id": newer.movie_id, "event_id": newer.event_id}]
    result = reconcile({e.event_id: e for e in events}, [older.event_id], stored, latest, 2)
    assert result.holds and result.unacknowledged_found == 1


def test_soak_verdict_flags_growth_after_warm_up_only() -> None:
    config = SoakConfig()
    warm_then_flat = [RssSample(n * 1000, (300 + min(n, 25)) * MIB) for n in range(100)]
    assert not judge(warm_then_flat, config)["keeps_growing"]
    leaking = [RssSample(n * 1000, (300 + n) * MIB) for n in range(100)]
    assert judge(leaking, config)["keeps_growing"]
