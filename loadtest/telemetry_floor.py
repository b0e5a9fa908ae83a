"""What tracing one ingest request costs the thread that serves it, measured in-process: the floor
under the bench's traced/untraced ratio (``python -m loadtest.telemetry_floor`` with the traced
function's ``OTEL_*`` variables, run so by the ingest scenario; prints JSON).

A saturated server's rate is the inverse of its event-loop thread's CPU a request, so traced
≥ 80 % of untraced leaves telemetry a quarter of the untraced request's CPU. Two figures, each
CPU time of the calling thread a request, configured by the same ``OTEL_*`` variables as the
traced function (the bench's: every trace sampled, OTLP to its collector; spans exported off the
GIL):

- ``sdk_spans_us``: what the conventions ask of any implementation on the SDK: a SERVER span
  with its required attributes, its PRODUCER child, the ``traceparent`` for the record; nothing
  measured, no answer header.
- ``ours_us``: ``IngestTelemetry`` as a request uses it (``serve`` around ``sending``), less the
  same answer untraced.

Warm, in a loop, without a server: lower bounds of what the bench's server pays.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import subprocess
import sys
import time
from collections.abc import Callable
from typing import Any

import orjson
from fastotel import OTLPSpanProcessor
from opentelemetry import propagate, trace
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.trace import SpanKind
from starlette.requests import Request
from starlette.responses import Response

from functions import telemetry
from loadtest.harness import Harness, progress
from loadtest.processes import ROOT

__all__ = ["main", "measure_telemetry_floor"]

_TOPIC = "views"
_SCOPE: dict[str, Any] = {
    "type": "http",
    "method": "POST",
    "path": "/v1/views",
    "scheme": "http",
    "http_version": "1.1",
    "server": ("127.0.0.1", 8080),
    "client": ("127.0.0.1", 5555),
    "headers": [(b"content-type", b"application/json"), (b"user-agent", b"wrk")],
}


def _thread_us_each(requests: int, one: Callable[[], object]) -> float:
    for _ in range(requests // 10):  # warm: caches, the interpreter's specialisation
        one()
    started = time.thread_time()
    for _ in range(requests):
        one()
    return (time.thread_time() - started) / requests * 1e6


def _sdk_spans(tracer: trace.Tracer) -> None:
    server = tracer.start_span(
        "POST /v1/views",
        kind=SpanKind.SERVER,
        attributes={
            "http.request.method": "POST",
            "url.scheme": "http",
            "url.path": "/v1/views",
            "http.route": "/v1/views",
        },
    )
    producer = tracer.start_span(
        f"send {_TOPIC}",
        context=trace.set_span_in_context(server),
        kind=SpanKind.PRODUCER,
        attributes={
            "messaging.system": "kafka",
            "messaging.destination.name": _TOPIC,
            "messaging.operation.name": "send",
            "messaging.operation.type": "send",
        },
    )
    carrier: dict[str, str] = {}
    propagate.inject(carrier, trace.set_span_in_context(producer))
    producer.end()
    server.set_attribute("http.response.status_code", 202)
    server.end()


def _ours(ingest: telemetry.IngestTelemetry) -> tuple[Callable[[], object], Callable[[], object]]:
    """One traced request through ``IngestTelemetry``, and the same answer untraced."""
    loop = asyncio.new_event_loop()

    async def traced_answer(_request: Request) -> Response:
        with ingest.sending(_TOPIC, None) as send:
            send.acknowledged(0, 1)
        return Response(b"{}", 202)

    async def untraced_answer(_request: Request) -> Response:
        return Response(b"{}", 202)

    def traced() -> object:
        return loop.run_until_complete(
            ingest.serve(Request(_SCOPE), "/v1/views", traced_answer, True)
        )

    def untraced() -> object:
        return loop.run_until_complete(untraced_answer(Request(_SCOPE)))

    return traced, untraced


def measure_telemetry_floor(harness: Harness) -> dict[str, float]:
    """The figures of a fresh interpreter, exporting to the bench's collector."""
    progress("ingest: tracing's floor, in-process")
    measured = subprocess.run(
        harness.python("-m", "loadtest.telemetry_floor"),
        cwd=ROOT,
        env={**os.environ, **harness.traced_env()},
        capture_output=True,
        check=True,
    )
    figures: dict[str, float] = orjson.loads(measured.stdout)
    progress(
        f"  the SDK's two spans {figures['sdk_spans_us']:.0f} µs, our telemetry"
        f" {figures['ours_us']:.0f} µs a request (the calling thread's CPU)"
    )
    return figures


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m loadtest.telemetry_floor", description=__doc__)
    parser.add_argument("--requests", type=int, default=20_000)
    args = parser.parse_args(argv)
    provider = TracerProvider()
    provider.add_span_processor(OTLPSpanProcessor())
    tracer = provider.get_tracer("telemetry-floor")
    sdk_spans_us = _thread_us_each(args.requests, lambda: _sdk_spans(tracer))
    provider.shutdown()
    ingest = telemetry.ingest()
    if ingest is None:
        raise SystemExit("telemetry is off: the OTEL_* variables did not turn it on")
    traced, untraced = _ours(ingest)
    ours_us = _thread_us_each(args.requests, traced) - _thread_us_each(args.requests, untraced)
    sys.stdout.write(
        orjson.dumps(
            {"requests": args.requests, "sdk_spans_us": sdk_spans_us, "ours_us": ours_us}
        ).decode()
        + "\n"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
