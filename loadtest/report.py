"""The outcome of a bench run: summaries (median, min-max), ratios, the table and the plot."""

from __future__ import annotations

import statistics
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")  # files only, no display
import matplotlib.pyplot as plt

from loadtest.ingest import SYSTEMS

__all__ = ["describe_queries", "plot", "summarise", "table"]

# The share of a core the untraced event-loop thread is busy from which its server is saturated.
_SATURATED = 0.9


def _spread(values: list[float]) -> dict[str, float]:
    return {"median": statistics.median(values), "min": min(values), "max": max(values)}


def summarise(results: dict[str, Any]) -> dict[str, Any]:
    """Medians and ranges per system and concurrency; ours/baseline and traced/ours ratios of
    neighbouring runs."""
    summary: dict[str, Any] = {}
    ingest = results.get("ingest", [])
    for concurrency in sorted({run["concurrency"] for run in ingest}):
        at = [run for run in ingest if run["concurrency"] == concurrency]
        entry: dict[str, Any] = {}
        for system in SYSTEMS:
            runs = [run for run in at if run["system"] == system]
            if not runs:
                continue
            entry[system] = {
                key: _spread([run[key] for run in runs])
                for key in (
                    "rate",
                    "p50_ms",
                    "p99_ms",
                    "server_cores",
                    "server_rss_mb",
                    "generator_cores",
                    "broker_cores",
                )
            }
            threads = ("server_main_thread_us", "server_other_threads_us")
            if all(key in run for run in runs for key in threads):  # results from before them
                entry[system].update({key: _spread([run[key] for run in runs]) for key in threads})
            entry[system]["errors"] = sum(run["errors"] for run in runs)
            entry[system]["every_2xx_in_kafka"] = all(run["every_2xx_in_kafka"] for run in runs)
        # Each run compared with its neighbour in time: drift of the machine cancels out.
        pairs = _pairs(at, "ours", "baseline")
        entry["ratio_rate"] = _spread([a["rate"] / b["rate"] for a, b in pairs])
        entry["ratio_p99"] = _spread([a["p99_ms"] / b["p99_ms"] for a, b in pairs])
        traced = _pairs(at, "traced", "ours")
        if traced:
            entry["ratio_traced_rate"] = _spread([a["rate"] / b["rate"] for a, b in traced])
            untraced = entry["ours"]
            if "server_main_thread_us" in untraced:
                loop_us = untraced["server_main_thread_us"]["median"]
                if loop_us * untraced["rate"]["median"] / 1e6 >= _SATURATED:
                    # Its rate is then the inverse of that thread's CPU a request: traced
                    # >= 80 % of untraced leaves telemetry a quarter of the untraced request's.
                    entry["telemetry_budget_us"] = loop_us * (1 / 0.8 - 1)
        summary[f"ingest_c{concurrency}"] = entry
    if "telemetry_floor" in results:
        summary["telemetry_floor"] = results["telemetry_floor"]
    if results.get("sink"):
        sink = results["sink"]
        kinds = sorted({(run["batch_max_records"], run.get("traced", False)) for run in sink})
        for batch, traced in kinds:
            runs = [
                run
                for run in sink
                if (run["batch_max_records"], run.get("traced", False)) == (batch, traced)
            ]
            summary[f"sink_batch_{batch}{'_traced' if traced else ''}"] = {
                "rate": _spread([run["rate"] for run in runs]),
                "sink_cores": _spread([run["sink_cores"] for run in runs]),
                "every_event_accounted_for": all(run["every_event_accounted_for"] for run in runs),
            }
    return summary


def _pairs(
    runs: list[dict[str, Any]], system: str, reference: str
) -> list[tuple[dict[str, Any], dict[str, Any]]]:
    return list(
        zip(
            [run for run in runs if run["system"] == system],
            [run for run in runs if run["system"] == reference],
            strict=True,
        )
    )


def _cell(spread: dict[str, float], fmt: str) -> str:
    return f"{spread['median']:{fmt}} ({spread['min']:{fmt}}-{spread['max']:{fmt}})"


def _threads(row: dict[str, Any]) -> str:
    if "server_main_thread_us" not in row:
        return ""
    return (
        f" (a request: {row['server_main_thread_us']['median']:.0f} µs event-loop thread"
        f" + {row['server_other_threads_us']['median']:.0f} µs other threads)"
    )


def table(results: dict[str, Any]) -> str:
    """A plain-text table: medians with min-max over the runs."""
    summary = results["summary"]
    lines = ["scenario                 | figure (median, min-max over runs)", "-" * 78]
    for key, entry in summary.items():
        if key.startswith("ingest_c"):
            concurrency = key.removeprefix("ingest_c")
            for system in [s for s in SYSTEMS if s in entry]:
                row = entry[system]
                lines.append(
                    f"ingest c={concurrency:<3} {system:<8} | {_cell(row['rate'], ',.0f')} req/s,"
                    f" p50 {_cell(row['p50_ms'], '.1f')} ms, p99 {_cell(row['p99_ms'], '.1f')}"
                    f" ms, server {row['server_cores']['median']:.2f} cores{_threads(row)},"
                    f" {row['server_rss_mb']['median']:.0f} MB, wrk/generator"
                    f" {row['generator_cores']['median']:.2f} cores, broker"
                    f" {row['broker_cores']['median']:.2f} cores, errors {row['errors']},"
                    f" every 2xx in Kafka: {row['every_2xx_in_kafka']}"
                )
            lines.append(
                f"ingest c={concurrency:<3} ratio    | req/s ours/baseline"
                f" {_cell(entry['ratio_rate'], '.2f')}, p99 ours/baseline"
                f" {_cell(entry['ratio_p99'], '.2f')}"
            )
            if "ratio_traced_rate" in entry:
                budget = entry.get("telemetry_budget_us")
                lines.append(
                    f"ingest c={concurrency:<3} traced   | req/s traced/untraced"
                    f" {_cell(entry['ratio_traced_rate'], '.2f')}"
                    + (
                        ""
                        if budget is None
                        else f"; untraced is saturated: 80 % of it leaves {budget:.0f} µs"
                        " a request for telemetry"
                    )
                )
        elif key == "telemetry_floor":
            lines.append(
                f"tracing floor            | in-process, the calling thread's CPU a request:"
                f" the SDK's two spans {entry['sdk_spans_us']:.0f} µs, our telemetry"
                f" {entry['ours_us']:.0f} µs"
            )
        elif key.startswith("sink_batch_"):
            lines.append(
                f"sink batch {key.removeprefix('sink_batch_'):<13} | {_cell(entry['rate'], ',.0f')}"
                f" events/s, sink {_cell(entry['sink_cores'], '.2f')} cores, every event stored"
                f" or dead-lettered: {entry['every_event_accounted_for']}"
            )
    if "freshness" in results:
        fresh = results["freshness"]
        lines.append(
            f"freshness                | p50 {fresh['p50_ms']:.0f} ms,"
            f" p99 {fresh['p99_ms']:.0f} ms,"
            f" max {fresh['max_ms']:.0f} ms ({fresh['probes']} probes,"
            f" {fresh['never_readable']} never readable, background"
            f" {fresh['background_rate']:.0f} req/s)"
        )
    if "queries" in results:
        queries = results["queries"]
        lines.append(f"queries ({queries['events']:,} events) | {describe_queries(queries)}")
    return "\n".join(lines)


def describe_queries(result: dict[str, Any]) -> str:
    """One line: lookup latency at each concurrency, then the aggregate under ingest."""
    lookups = "; ".join(
        f"{run['concurrency']} at a time p50 {run['p50_ms']:.1f} ms p99 {run['p99_ms']:.1f} ms"
        for run in result["lookups"]
    )
    return (
        f"position lookup {lookups}; most-watched under ingest:"
        f" median {result['aggregate_median_ms']:.0f} ms, max {result['aggregate_max_ms']:.0f} ms"
    )


def plot(results: dict[str, Any], path: Path) -> Path:
    """Ingest req/s and p99 per system (median, min-max bars), sink rate, freshness, queries."""
    figure, axes = plt.subplots(1, 4, figsize=(18, 4.5))
    summary = results["summary"]
    ingest_keys = [k for k in summary if k.startswith("ingest_c")]
    for axis, metric, label in ((axes[0], "rate", "req/s"), (axes[1], "p99_ms", "p99 latency, ms")):
        systems = [s for s in SYSTEMS if ingest_keys and s in summary[ingest_keys[0]]]
        width = 0.8 / max(1, len(systems))
        for index, system in enumerate(systems):
            offset = (index - (len(systems) - 1) / 2) * width
            spreads = [summary[k][system][metric] for k in ingest_keys]
            medians = [s["median"] for s in spreads]
            errors = [
                [s["median"] - s["min"] for s in spreads],
                [s["max"] - s["median"] for s in spreads],
            ]
            positions = [i + offset for i in range(len(ingest_keys))]
            axis.bar(positions, medians, width, yerr=errors, capsize=4, label=system)
        axis.set_xticks(range(len(ingest_keys)), [k.replace("ingest_", "") for k in ingest_keys])
        axis.set_title(f"ingest: {label}")
        axis.legend()
    sink_keys = [k for k in summary if k.startswith("sink_batch_")]
    if sink_keys:
        medians = [summary[k]["rate"]["median"] for k in sink_keys]
        axes[2].bar([k.removeprefix("sink_batch_") for k in sink_keys], medians)
        axes[2].axhline(150_000, linestyle="--", color="grey", label="target 150k")
        axes[2].set_title("sink: events/s by batch size")
        axes[2].legend()
    bars = {}
    if "freshness" in results:
        bars["freshness p50"] = results["freshness"]["p50_ms"]
        bars["freshness p99"] = results["freshness"]["p99_ms"]
    if "queries" in results:
        for run in results["queries"]["lookups"]:
            bars[f"lookup p99, {run['concurrency']} at a time"] = run["p99_ms"]
        bars["most-watched"] = results["queries"]["aggregate_median_ms"]
    if bars:
        axes[3].bar(list(bars), list(bars.values()))
        axes[3].set_yscale("log")
        axes[3].set_title("freshness and queries, ms (log)")
        axes[3].tick_params(axis="x", rotation=20)
    machine = results["machine"]
    figure.suptitle(
        f"{results['started_at']} — {machine['cores']} cores {machine['cpu_model']},"
        f" profile {results['profile']}"
    )
    figure.tight_layout()
    figure.savefig(path, dpi=100)
    plt.close(figure)
    return path
