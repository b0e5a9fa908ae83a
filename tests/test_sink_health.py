"""The consumer loop's probes (functions/sink/triggers/health.py): decided from the loop's last
poll, served over real HTTP, and fed by a real loop on the real broker."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from http import HTTPStatus

import httpx
import pytest
from localkafka import free_port
from support import JWT_SECRET, RunningSink, eventually, repo_root

from clickhouse.store import ViewStore
from functions.settings import Settings
from functions.sink.triggers.health import HealthServer, probe_answer

STALL_SECONDS = 300.0


@dataclass
class FakeLoop:
    last_poll_at: float | None = None


@pytest.mark.parametrize(
    ("last_poll", "now", "path", "status"),
    [
        (None, 1000.0, "/healthz", HTTPStatus.OK),  # starting: alive, not yet ready
        (None, 1000.0, "/readyz", HTTPStatus.SERVICE_UNAVAILABLE),
        (990.0, 1000.0, "/healthz", HTTPStatus.OK),
        (990.0, 1000.0, "/readyz", HTTPStatus.OK),
        (600.0, 1000.0, "/healthz", HTTPStatus.SERVICE_UNAVAILABLE),  # stuck for 400 s
        # Readiness follows start-up only: a stuck loop is liveness's business.
        (600.0, 1000.0, "/readyz", HTTPStatus.OK),
        (990.0, 1000.0, "/metrics", HTTPStatus.NOT_FOUND),
    ],
)
def test_probe_answer_follows_the_last_poll(
    last_poll: float | None, now: float, path: str, status: HTTPStatus
) -> None:
    answer, _body, content_type = probe_answer(path, FakeLoop(last_poll), STALL_SECONDS, now)
    assert answer == status
    assert content_type == ("application/json" if status == 200 else "application/problem+json")


@pytest.fixture
def served_loop() -> Iterator[tuple[FakeLoop, str, list[float]]]:
    loop, now = FakeLoop(), [1000.0]
    server = HealthServer(loop, 0, STALL_SECONDS, host="127.0.0.1", clock=lambda: now[0])
    server.start()
    try:
        yield loop, f"http://127.0.0.1:{server.port}", now
    finally:
        server.stop()


def test_liveness_fails_over_http_once_the_loop_stops_polling(
    served_loop: tuple[FakeLoop, str, list[float]],
) -> None:
    loop, base, now = served_loop
    assert httpx.get(f"{base}/readyz").status_code == 503
    loop.last_poll_at = now[0]
    assert httpx.get(f"{base}/readyz").json() == {"status": "ready"}
    now[0] += STALL_SECONDS + 1
    stuck = httpx.get(f"{base}/healthz")
    assert stuck.status_code == 503
    assert stuck.headers["content-type"] == "application/problem+json"
    assert "has not polled" in stuck.json()["detail"]


def test_a_running_loop_keeps_polling_while_idle(settings: Settings, store: ViewStore) -> None:
    with RunningSink(settings, store) as sink:
        first = eventually(lambda: sink.consumer.last_poll_at, what="the first poll")
        eventually(lambda: (sink.consumer.last_poll_at or 0) > first, what="a later poll")


def test_consumer_process_serves_its_probes_on_health_port(settings: Settings) -> None:
    port = free_port()
    env = {
        **os.environ,
        "HEALTH_PORT": str(port),
        "KAFKA_BOOTSTRAP_SERVERS": settings.kafka_bootstrap_servers,
        "VIEWS_TOPIC": settings.views_topic,
        "SINK_GROUP_ID": settings.sink_group_id,
        "CLICKHOUSE_DSN": "chdb://memory",
        "JWT_SECRET": JWT_SECRET,
    }
    process = subprocess.Popen(
        [sys.executable, "-m", "functions.sink"],
        cwd=repo_root(),
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )

    def probe(path: str) -> int | None:
        try:
            return httpx.get(f"http://127.0.0.1:{port}{path}").status_code
        except httpx.TransportError:
            return None

    try:
        eventually(lambda: probe("/readyz") == 200, timeout=60, what="/readyz to answer 200")
        assert probe("/healthz") == 200
    finally:
        process.terminate()
        _out, err = process.communicate(timeout=60)
    assert process.returncode == 0, err.decode()
