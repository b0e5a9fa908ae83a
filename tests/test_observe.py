"""`make trace`'s waterfall, from an answer shaped like Jaeger's /api/traces/{id}."""

from __future__ import annotations

from observe.observe import waterfall

TRACE_ID = "8d0e6a0f3c5b4e2f9a1b7c6d5e4f3a2b"
SINK_TRACE_ID = "11112222333344445555666677778888"


def _span(span_id: str, name: str, start: int, duration: int, **extra: object) -> dict[str, object]:
    return {
        "traceID": TRACE_ID,
        "spanID": span_id,
        "operationName": name,
        "startTime": start,
        "duration": duration,
        "processID": "p1",
        "references": [],
        "tags": [],
        **extra,
    }


def test_the_waterfall_shows_the_tree_durations_services_status_and_links() -> None:
    trace = {
        "traceID": TRACE_ID,
        "processes": {"p1": {"serviceName": "ingest"}},
        "spans": [
            _span(
                "b",
                "views send",
                1_005_000,
                6_000,
                references=[{"refType": "CHILD_OF", "traceID": TRACE_ID, "spanID": "a"}],
                tags=[{"key": "otel.status_code", "value": "ERROR"}],
            ),
            _span("a", "POST /v1/views", 1_000_000, 12_400),
            _span(
                "c",
                "sink batch",
                1_020_000,
                2_000,
                references=[{"refType": "FOLLOWS_FROM", "traceID": SINK_TRACE_ID, "spanID": "d"}],
            ),
        ],
    }
    lines = waterfall(trace, width=20)
    assert lines[0] == f"trace {TRACE_ID}  3 spans  22.0 ms"
    root, child, sink, link = lines[1:]
    assert "     0.0 ms     12.4 ms  ingest" in root and "POST /v1/views" in root
    assert "     5.0 ms      6.0 ms" in child and "ERROR" in child
    assert "  views send" in child  # indented under its parent
    assert child.index("█") > root.index("█")
    assert "sink batch" in sink
    assert f"link to trace {SINK_TRACE_ID} span d" in link
