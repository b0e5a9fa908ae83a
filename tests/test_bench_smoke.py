"""``make bench`` in its smoke profile, end to end, so that it cannot rot.

Figures are not checked (benchmarks are not tests); only that every scenario ran, that the
delivery checks the bench makes held, and that the JSON, the plot and the table were written.
The smoke profile uses the asyncio load generator, so this needs no ``wrk``.
"""

from __future__ import annotations

from pathlib import Path

from support import run_benchmark


def test_bench_smoke_profile_runs_every_scenario(tmp_path: Path) -> None:
    bench = run_benchmark("loadtest", tmp_path, "--profile", "smoke", timeout=240)
    results = bench.results
    assert {run["system"] for run in results["ingest"]} == {"ours", "traced", "baseline"}
    assert all(run["every_2xx_in_kafka"] and run["succeeded"] for run in results["ingest"])
    # Where a request's CPU went: the event loop's thread always has some.
    assert all(run["server_main_thread_us"] > 0 for run in results["ingest"])
    assert all(run["server_other_threads_us"] >= 0 for run in results["ingest"])
    assert "µs event-loop thread" in bench.stdout
    assert 2 <= len(results["ingest_warm_up_broker_us"]) <= 8  # settling rounds, at least two
    assert all(run["every_event_accounted_for"] for run in results["sink"])
    assert {run["traced"] for run in results["sink"]} == {False, True}
    assert results["freshness"]["never_readable"] == 0
    assert all(run["count"] > 0 for run in results["queries"]["lookups"])
    assert "ours/baseline" in bench.stdout
    assert "traced/untraced" in bench.stdout
    # The floor under that ratio, and the budget the ratio's goal leaves.
    floor = results["telemetry_floor"]
    assert 0 < floor["sdk_spans_us"] and 0 < floor["ours_us"]
    assert "the SDK's two spans" in bench.stdout
    assert "a request for telemetry" in bench.stdout
    assert results["machine"]["cores"] and results["versions"]["kafka"]
