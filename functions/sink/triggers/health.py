"""The consumer loop's probes: a small HTTP server on ``HEALTH_PORT``, on a thread of its own.

- ``GET /healthz`` (liveness): 200 while the poll loop has polled within the consumer's
  ``max.poll.interval.ms``; 503 once it has not. A loop silent that long is stuck (an insert
  that never returns, a deadlock) and the broker has already taken its partitions away:
  Kubernetes restarts the pod, and its uncommitted batch is redelivered.
- ``GET /readyz`` (start-up and readiness): 200 once the loop has polled for the first time
  (settings read, store opened, subscribed). After start-up it follows the loop only, never
  Kafka or ClickHouse: a consumer with no Service in front gains nothing from being taken out
  during an outage, and a rollout must not stall on one (docs/deployment.md, "Probes").

The answers are small JSON documents (RFC 9457 problems when not 200); probes do not log.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Protocol

import orjson

from functions.problems import PROBLEM_CONTENT_TYPE, problem_body

__all__ = ["HealthServer", "PollingLoop", "probe_answer", "serving_probe_answer"]


class PollingLoop(Protocol):
    """What the probes read of the loop: when it last polled (``time.monotonic``), if ever."""

    @property
    def last_poll_at(self) -> float | None: ...


def probe_answer(
    path: str, loop: PollingLoop, stall_seconds: float, now: float
) -> tuple[HTTPStatus, bytes, str]:
    """Status, body and content type of one probe, decided from the loop's last poll alone."""
    last_poll = loop.last_poll_at
    if path == "/healthz":
        if last_poll is not None and now - last_poll > stall_seconds:
            detail = f"the poll loop has not polled for {now - last_poll:.0f} s"
            return _problem(HTTPStatus.SERVICE_UNAVAILABLE, detail)
        return _ok("alive")
    if path == "/readyz":
        if last_poll is None:
            return _problem(HTTPStatus.SERVICE_UNAVAILABLE, "the poll loop has not started")
        return _ok("ready")
    return _problem(HTTPStatus.NOT_FOUND, f"no probe at {path}")


def serving_probe_answer(path: str) -> tuple[HTTPStatus, bytes, str]:
    """The liveness probe of a sink trigger served by functions-framework (KafkaSource,
    kafka-connector): the process answers. Their ``/readyz`` (ClickHouse answers) is served by
    ``functions/main.py`` with ``functions.readiness``."""
    if path != "/healthz":
        return _problem(HTTPStatus.NOT_FOUND, f"no probe at {path}")
    return _ok("alive")


def _ok(status: str) -> tuple[HTTPStatus, bytes, str]:
    return HTTPStatus.OK, orjson.dumps({"status": status}), "application/json"


def _problem(status: HTTPStatus, detail: str) -> tuple[HTTPStatus, bytes, str]:
    return status, problem_body(status, detail), PROBLEM_CONTENT_TYPE


class HealthServer:
    """Serves the probes of ``loop`` on ``port`` until ``stop``; ``port`` 0 picks a free one."""

    def __init__(
        self,
        loop: PollingLoop,
        port: int,
        stall_seconds: float,
        host: str = "0.0.0.0",  # the kubelet probes the pod's address
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        class ProbeHandler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                status, body, content_type = probe_answer(
                    self.path.partition("?")[0], loop, stall_seconds, clock()
                )
                self.send_response(status)
                self.send_header("Content-Type", content_type)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, format: str, *args: object) -> None:
                """A line per probe every few seconds would drown the sink's own logs."""

        self._server = ThreadingHTTPServer((host, port), ProbeHandler)
        self._server.daemon_threads = True
        self._thread = threading.Thread(
            target=self._server.serve_forever, name="sink-health", daemon=True
        )

    @property
    def port(self) -> int:
        return int(self._server.server_address[1])

    def start(self) -> HealthServer:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._thread.join()
