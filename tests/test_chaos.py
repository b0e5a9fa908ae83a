"""The chaos run in its short form: every fault of ``make chaos`` on a small load."""

from __future__ import annotations

from pathlib import Path

from chaos import ChaosConfig, run_chaos


def test_short_chaos_run_loses_nothing_duplicates_nothing_and_ends_on_the_latest_positions(
    tmp_path: Path,
) -> None:
    config = ChaosConfig(
        events=2_000,
        users=40,
        movies=10,
        concurrency=32,
        broker_down_seconds=1,
        clickhouse_down_seconds=1,
        poison_every=200,
        session_timeout_ms=6_000,
        retry_max_ms=1_000,
        catch_up_timeout_seconds=120,
    )
    summary = run_chaos(config, tmp_path / "results")
    assert summary["acknowledged"] > 0 and summary["rejected"] > 0  # the outage was felt
    assert summary["lost"] == 0
    assert summary["duplicates_after_final"] == 0
    assert summary["wrong_latest_positions"] == 0
    assert summary["dlq_distinct_origins"] == summary["poison_sent"] == 10
    assert summary["promise_kept"]
    assert (tmp_path / "results" / "timeline.png").stat().st_size > 0
