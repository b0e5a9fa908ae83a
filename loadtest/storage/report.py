"""The study's table (markdown, as docs/storage-choice.md quotes it) and its plot."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")  # files only, no display
import matplotlib.pyplot as plt

__all__ = ["plot", "table"]

_MB = 2**20

# (label, how to read it from one engine's results, format)
_ROWS: list[tuple[str, Any, str]] = [
    ("bulk insert, rows/s", lambda e: e["bulk_insert"]["rows_per_second"], ",.0f"),
    ("bulk insert, total s", lambda e: e["bulk_insert"]["insert_seconds"], ".2f"),
    ("batch insert p50 / p99 ms", lambda e: _pair(e["bulk_insert"]["batch_ms"]), ""),
    ("after-load step s", lambda e: e["bulk_insert"]["after_load_seconds"], ".2f"),
    ("position lookup warm p50 / p99 ms", lambda e: _pair(e["reads"]["warm"]["position_ms"]), ""),
    ("position lookup cold ms", lambda e: e["reads"]["cold"]["position_ms"], ".1f"),
    ("viewer's history warm p50 / p99 ms", lambda e: _pair(e["reads"]["warm"]["history_ms"]), ""),
    ("viewer's history cold ms", lambda e: e["reads"]["cold"]["history_ms"], ".1f"),
    (
        "most watched on a day warm median ms",
        lambda e: e["reads"]["warm"]["day_top_ms"]["median"],
        ".1f",
    ),
    ("most watched on a day cold ms", lambda e: e["reads"]["cold"]["day_top_ms"], ".1f"),
    (
        "distinct viewers per movie warm p50 ms",
        lambda e: e["reads"]["warm"]["viewers_per_movie_ms"]["p50"],
        ".1f",
    ),
    (
        "distinct viewers per movie cold ms",
        lambda e: e["reads"]["cold"]["viewers_per_movie_ms"],
        ".1f",
    ),
    (
        "while inserting: rows/s achieved (target)",
        lambda e: (
            f"{e['reads_while_inserting']['achieved_rows_per_second']:,.0f}"
            f" ({e['reads_while_inserting']['target_rows_per_second']:,})"
        ),
        "",
    ),
    (
        "while inserting: position p50 / p99 ms",
        lambda e: _pair(e["reads_while_inserting"]["position_ms"]),
        "",
    ),
    (
        "while inserting: day ranking p50 / max ms",
        lambda e: _pair(e["reads_while_inserting"]["day_top_ms"], "max"),
        "",
    ),
    ("on disk MB", lambda e: e["bytes_on_disk"] / _MB, ",.0f"),
    ("peak memory, bulk insert MB", lambda e: e["bulk_insert"]["peak_memory_bytes"] / _MB, ",.0f"),
    (
        "peak memory, inserting + reads MB",
        lambda e: e["reads_while_inserting"]["peak_memory_bytes"] / _MB,
        ",.0f",
    ),
    ("peak memory, reads MB", lambda e: e["reads"]["peak_memory_bytes"] / _MB, ",.0f"),
]


def _pair(quantiles: dict[str, float], upper: str = "p99") -> str:
    return f"{quantiles['p50']:.2f} / {quantiles[upper]:.2f}"


def table(results: dict[str, Any]) -> str:
    """One markdown table: a row per figure, a column per engine."""
    engines = results["engines"]
    lines = [
        f"| {results['rows']:,} deliveries | " + " | ".join(engines) + " |",
        "| --- |" + " ---: |" * len(engines),
    ]
    for label, read, fmt in _ROWS:
        cells = [format(read(result), fmt) for result in engines.values()]
        lines.append(f"| {label} | " + " | ".join(cells) + " |")
    agreed = results["answers_compared"]
    lines.append(
        "\nSame answers from " + ", ".join(agreed) + " (checked)."
        if agreed
        else "\nOne engine only: answers not compared."
    )
    return "\n".join(lines)


def plot(results: dict[str, Any], path: Path) -> None:
    """Insert rate, read latencies (warm, cold, under inserts), disk and memory per engine."""
    engines = results["engines"]
    names = list(engines)
    panels: list[tuple[str, dict[str, list[float]], str]] = [
        (
            "bulk insert (rows/s, higher is better)",
            {"rows/s": [e["bulk_insert"]["rows_per_second"] for e in engines.values()]},
            "linear",
        ),
        (
            "reads, warm p50 / cold (ms, log)",
            {
                "position": [e["reads"]["warm"]["position_ms"]["p50"] for e in engines.values()],
                "history": [e["reads"]["warm"]["history_ms"]["p50"] for e in engines.values()],
                "day ranking": [
                    e["reads"]["warm"]["day_top_ms"]["median"] for e in engines.values()
                ],
                "viewers/movie": [
                    e["reads"]["warm"]["viewers_per_movie_ms"]["p50"] for e in engines.values()
                ],
                "day ranking cold": [e["reads"]["cold"]["day_top_ms"] for e in engines.values()],
            },
            "log",
        ),
        (
            "position lookups p99 (ms, log)",
            {
                "idle": [e["reads"]["warm"]["position_ms"]["p99"] for e in engines.values()],
                "while inserting": [
                    e["reads_while_inserting"]["position_ms"]["p99"] for e in engines.values()
                ],
            },
            "log",
        ),
        (
            "disk and peak memory (MB)",
            {
                "on disk": [e["bytes_on_disk"] / _MB for e in engines.values()],
                "peak memory": [
                    max(e[p]["peak_memory_bytes"] for p in ("bulk_insert", "reads_while_inserting"))
                    / _MB
                    for e in engines.values()
                ],
            },
            "linear",
        ),
    ]
    figure, axes = plt.subplots(1, len(panels), figsize=(5 * len(panels), 4.2))
    for axis, (title, series, scale) in zip(axes, panels, strict=True):
        width = 0.8 / len(series)
        for index, (label, values) in enumerate(series.items()):
            axis.bar([n + index * width for n in range(len(names))], values, width, label=label)
        axis.set_xticks([n + 0.4 - width / 2 for n in range(len(names))], names)
        axis.set_yscale(scale)
        axis.set_title(title, fontsize=10)
        if len(series) > 1:
            axis.legend(fontsize=8)
    figure.suptitle(
        f"Storage study: {results['rows']:,} view deliveries, same data and answers"
        f" ({results.get('cpus', '?')} shared vCPUs)"
    )
    figure.tight_layout()
    figure.savefig(path, dpi=110)
    plt.close(figure)
