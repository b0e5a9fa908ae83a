"""``make bench`` in its smoke profile, end to end, so that it cannot rot.

Figures are not checked (benchmarks are not tests); only that every scenario ran, that the
delivery checks the bench makes held, and that the JSON, the plot and the table were written.
The smoke profile uses the asyncio load generator, so this needs no ``wrk``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from support import run_benchmark

from loadtest.report import summarise, table


def test_bench_smoke_profile_runs_every_scenario(tmp_path: Path) -> None:
    bench = run_benchmark("loadtest", tmp_path, "--profile", "smoke", timeout=240)
    results = bench.results
    assert {run["system"] for run in results["ingest"]} == {"ours", "traced", "baseline"}
    assert all(run["every_2xx_in_kafka"] and run["succeeded"] for run in results["ingest"])
    # Where a request's CPU went: the event loop's thread always has some.
    assert all(run["server_main_thread_us"] > 0 for run in results["ingest"])
    assert all("server_other_threads_us" in run for run in results["ingest"])
    assert "µs event-loop thread" in bench.stdout
    assert 2 <= len(results["ingest_warm_up_broker_us"]) <= 8  # settling rounds, at least two
    assert all(run["every_event_accounted_for"] for run in results["sink"])
    assert {run["traced"] for run in results["sink"]} == {False, True}
    assert results["freshness"]["never_readable"] == 0
    assert all(run["count"] > 0 for run in results["queries"]["lookups"])
    assert "ours/baseline" in bench.stdout
    assert "traced/untraced" in bench.stdout
    # The floor under that ratio, measured in-process.
    floor = results["telemetry_floor"]
    assert floor["sdk_spans_us"] > 0 and floor["ours_us"] > 0
    assert "the SDK's two spans" in bench.stdout
    assert results["machine"]["cores"] and results["versions"]["kafka"]


def _ingest_run(system: str, concurrency: int, rate: float, loop_us: float) -> dict[str, Any]:
    return {
        "system": system,
        "concurrency": concurrency,
        "rate": rate,
        "server_main_thread_us": loop_us,
        "server_other_threads_us": 10.0,
        **dict.fromkeys(("p50_ms", "p99_ms", "server_cores", "server_rss_mb"), 1.0),
        **dict.fromkeys(("generator_cores", "broker_cores"), 0.1),
        "errors": 0,
        "every_2xx_in_kafka": True,
    }


def test_the_telemetry_budget_is_stated_only_where_untraced_is_saturated() -> None:
    # A saturated server's rate is the inverse of its loop's CPU a request: 80 % of it leaves
    # telemetry a quarter of that CPU. Below saturation the ratio says nothing of the kind.
    results: dict[str, Any] = {
        "ingest": [
            _ingest_run("ours", 16, 4_000, 100),  # the loop busy 0.4 of the time
            _ingest_run("traced", 16, 3_600, 200),
            _ingest_run("baseline", 16, 3_000, 300),
            _ingest_run("ours", 64, 10_000, 100),  # busy all the time
            _ingest_run("traced", 64, 4_000, 250),
            _ingest_run("baseline", 64, 3_000, 300),
        ],
        "telemetry_floor": {"requests": 1, "sdk_spans_us": 30.0, "ours_us": 80.0},
    }
    results["summary"] = summary = summarise(results)
    assert "telemetry_budget_us" not in summary["ingest_c16"]
    assert summary["ingest_c64"]["telemetry_budget_us"] == 25.0
    printed = table(results)
    assert "leaves 25 µs a request for telemetry" in printed
    assert "the SDK's two spans 30 µs, our telemetry 80 µs" in printed
