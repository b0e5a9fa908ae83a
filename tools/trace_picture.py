"""Draw one request's trace, as a collector received it, for docs/observability.md.

    PYTHONPATH=infra python tools/trace_picture.py <traces.jsonl> <out.png>

Reads the OTLP JSON lines the test collector writes (``infra/localotelcol.py``), picks the trace
of the first ``POST /v1/views`` and the sink batch that links to its producer span, and draws
both as a waterfall: one bar a span, by service, the link as a dashed arrow.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")  # files only, no display
import matplotlib.pyplot as plt
from localotelcol import attributes, read_exports, spans

_KINDS = {1: "INTERNAL", 2: "SERVER", 3: "CLIENT", 4: "PRODUCER", 5: "CONSUMER"}
_COLOURS = {"watch-progress-ingest": "tab:blue", "watch-progress-sink": "tab:orange"}


def _descendants(every: list[dict[str, Any]], root: dict[str, Any]) -> list[dict[str, Any]]:
    found, frontier = [root], [root["spanId"]]
    while frontier:
        parent = frontier.pop()
        children = [s for s in every if s.get("parentSpanId") == parent]
        found.extend(children)
        frontier.extend(child["spanId"] for child in children)
    return found


def _depth(span: dict[str, Any], by_id: dict[str, dict[str, Any]]) -> int:
    depth = 0
    while span.get("parentSpanId") in by_id:
        span = by_id[span["parentSpanId"]]
        depth += 1
    return depth


def draw(traces: Path, out: Path) -> Path:
    every = spans(read_exports(traces))
    server = next(s for s in every if s["name"] == "POST /v1/views")
    request = [s for s in every if s["traceId"] == server["traceId"]]
    producer = next(s for s in request if _KINDS[s["kind"]] == "PRODUCER")
    batch = next(
        s for s in every if any(link["spanId"] == producer["spanId"] for link in s.get("links", []))
    )
    shown = sorted(request, key=lambda s: int(s["startTimeUnixNano"]))
    shown += sorted(_descendants(every, batch), key=lambda s: int(s["startTimeUnixNano"]))
    by_id = {s["spanId"]: s for s in shown}
    origin = min(int(s["startTimeUnixNano"]) for s in shown)

    figure, axis = plt.subplots(figsize=(12, 0.55 * len(shown) + 1.6))
    rows = {}
    for row, span in enumerate(shown):
        start = (int(span["startTimeUnixNano"]) - origin) / 1e6
        length = max((int(span["endTimeUnixNano"]) - int(span["startTimeUnixNano"])) / 1e6, 0.05)
        axis.barh(row, length, left=start, color=_COLOURS.get(span["service"], "grey"))
        detail = attributes(span)
        extra = ""
        if "messaging.kafka.offset" in detail:
            partition = detail["messaging.destination.partition.id"]
            extra = f"  partition {partition}, offset {detail['messaging.kafka.offset']}"
        elif "messaging.batch.message_count" in detail:
            records, links = detail["messaging.batch.message_count"], len(span.get("links", []))
            extra = f"  {records} record(s), {links} link(s)"
        elif "db.collection.name" in detail:
            extra = (
                f"  {detail['db.collection.name']}, {detail.get('db.operation.batch.size')} row(s)"
            )
        indent = "  " * _depth(span, by_id)
        axis.text(
            start + length,
            row,
            f" {indent}{span['name']} [{_KINDS[span['kind']]}] {length:.1f} ms{extra}",
            va="center",
            fontsize=8,
        )
        rows[span["spanId"]] = (row, start, length)
    link_row, link_start, link_length = rows[producer["spanId"]]
    batch_row, batch_start, _ = rows[batch["spanId"]]
    axis.annotate(
        "",
        xy=(batch_start, batch_row),
        xytext=(link_start + link_length, link_row + 0.3),
        arrowprops={"arrowstyle": "->", "linestyle": "--", "color": "black"},
    )
    axis.text(
        (link_start + link_length + batch_start) / 2,
        (link_row + batch_row) / 2 + 0.35,
        "span link",
        fontsize=8,
        style="italic",
    )
    axis.set_yticks(
        range(len(shown)), [s["service"].removeprefix("watch-progress-") for s in shown]
    )
    axis.invert_yaxis()
    axis.set_xlabel("ms since the request arrived")
    axis.set_xlim(right=axis.get_xlim()[1] * 1.6)  # room for the labels
    axis.set_title(
        f"One POST /v1/views: trace {server['traceId']} and the sink batch that links to it"
    )
    figure.tight_layout()
    figure.savefig(out, dpi=100)
    plt.close(figure)
    return out


if __name__ == "__main__":
    print(draw(Path(sys.argv[1]), Path(sys.argv[2])))
