"""Both functions served by the functions-framework CLI, as a Knative Service would run them."""

from __future__ import annotations

import gc
import os
import subprocess
import sys
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path

import httpx
import orjson
import pytest
from localkafka import LocalKafka, free_port
from support import (
    JWT_SECRET,
    bearer,
    consume_all,
    eventually,
    functions_main,
    repo_root,
    view_record,
)

from functions import bootstrap
from functions.bootstrap import collect_cycles_rarely
from functions.settings import Settings

FRAMEWORK = str(Path(sys.executable).parent / "functions-framework")


@contextmanager
def serving(target: str, env: dict[str, str], log: Path) -> Iterator[str]:
    """``functions-framework --target <target> --asgi`` on a free port, until the block ends."""
    port = free_port()
    with log.open("wb") as output:
        server = subprocess.Popen(
            [
                FRAMEWORK,
                "--source",
                "functions/main.py",
                "--target",
                target,
                "--asgi",
                "--host",
                "127.0.0.1",
                "--port",
                str(port),
            ],
            cwd=repo_root(),
            env={**os.environ, **env},
            stdout=output,
            stderr=subprocess.STDOUT,
        )
        base = f"http://127.0.0.1:{port}"

        def listening() -> bool:
            assert server.poll() is None, log.read_text()
            try:
                httpx.get(base)
                return True
            except httpx.TransportError:
                return False

        try:
            eventually(listening, timeout=60, what=f"{target} to listen")
            yield base
        finally:
            server.terminate()
            server.wait(timeout=30)


def test_ingest_under_gunicorn_workers_acknowledges_through_kafka(
    settings: Settings, tmp_path: Path
) -> None:
    # Two forked workers: each must build its own producer after the fork.
    env = {
        "WORKERS": "2",
        "KAFKA_BOOTSTRAP_SERVERS": settings.kafka_bootstrap_servers,
        "VIEWS_TOPIC": settings.views_topic,
        "JWT_SECRET": JWT_SECRET,
        "CLICKHOUSE_DSN": f"chdb://{tmp_path / 'unused'}",
    }
    user = uuid.uuid4()
    log = tmp_path / "ingest.log"
    with serving("ingest", env, log) as base, httpx.Client() as client:
        statuses = [
            client.post(
                f"{base}/v1/views",
                json={"movie_id": str(uuid.uuid4()), "movie_time_offset": i},
                headers=bearer(user),
            ).status_code
            for i in range(20)
        ]
    assert statuses == [202] * 20
    consume_all(settings.kafka_bootstrap_servers, settings.views_topic, 20)
    # No access log by default (LOG_ACCESS): a line per request cost a fifth of the throughput.
    assert b"/v1/views" not in log.read_bytes()


def test_log_access_writes_a_json_line_per_request(tmp_path: Path) -> None:
    env = {
        "LOG_ACCESS": "true",
        "KAFKA_BOOTSTRAP_SERVERS": f"127.0.0.1:{free_port()}",  # /healthz needs no broker
        "JWT_SECRET": JWT_SECRET,
        "CLICKHOUSE_DSN": f"chdb://{tmp_path / 'unused'}",
    }
    log = tmp_path / "ingest.log"
    with serving("ingest", env, log) as base:
        assert httpx.get(f"{base}/healthz").status_code == 200

        # Alive, not ready: its own server names the dependency it waits for (once the
        # embedded ClickHouse, which takes a few seconds to open, answers).
        def waiting_for_kafka_only() -> bool:
            answer = httpx.get(f"{base}/readyz", timeout=10)
            assert answer.status_code == 503
            return bool(answer.json()["detail"] == "not ready: kafka")

        eventually(waiting_for_kafka_only, timeout=60, what="503 naming kafka only")
    access = [
        line
        for line in map(
            orjson.loads, (raw for raw in log.read_bytes().splitlines() if raw.startswith(b"{"))
        )
        if line["log"]["logger"] == "uvicorn.access"
    ]
    assert any("GET /healthz" in line["message"] for line in access), log.read_text()


def test_cloudevent_sink_served_by_the_framework_stores_the_record(
    kafka: LocalKafka, tmp_path: Path
) -> None:
    dsn = f"chdb://{tmp_path / 'clickhouse'}"
    env = {"CLICKHOUSE_DSN": dsn, "JWT_SECRET": JWT_SECRET}
    subprocess.run(
        [sys.executable, "-m", "clickhouse.migrate"],
        cwd=repo_root(),
        env={**os.environ, **env},
        check=True,
        capture_output=True,
    )
    record = view_record(uuid.uuid4(), uuid.uuid4(), 5, datetime(2026, 11, 2, tzinfo=UTC))
    key, value = record.to_kafka()
    headers = {
        "ce-specversion": "1.0",
        "ce-id": "partition:1/offset:8",
        "ce-source": "/apis/v1/namespaces/default/kafkasources/views-sink#views",
        "ce-type": "dev.knative.kafka.event",
        "ce-key": key.decode(),
        "content-type": "application/json",
    }
    log = tmp_path / "sink.log"
    with serving("sink", env, log) as base:
        ready = httpx.get(f"{base}/readyz", timeout=10)
        stored = httpx.post(base, content=value, headers=headers)
        poison = httpx.post(base, content=b"{", headers=headers)
        not_an_event = httpx.post(base, content=value, headers={"content-type": "text/plain"})
        probes = [httpx.get(f"{base}{path}").status_code for path in ("/healthz", "/readyz")]
    assert ready.status_code == 200, ready.text
    assert ready.json() == {"status": "ready", "dependencies": {"clickhouse": "ready"}}
    assert stored.status_code == 200, stored.text
    assert poison.status_code == 422
    assert poison.headers["content-type"] == "application/problem+json"
    assert not_an_event.status_code == 400
    assert not_an_event.headers["content-type"] == "application/problem+json"
    # The platform's probes are answered on GET, which the framework's CloudEvent routes refuse.
    assert probes == [200, 200]
    # The worker logs JSON lines, as the rest of the project does (shipped to ELK as they are).
    logged = [orjson.loads(line) for line in log.read_bytes().splitlines() if line[:1] == b"{"]
    assert any(entry.get("message") == "poison record rejected" for entry in logged), logged
    # The server has exited and released its data directory: count what it stored.
    count = subprocess.run(
        [
            sys.executable,
            "-c",
            "import sys, clickhouse_connect;"
            "c = clickhouse_connect.get_client(dsn=sys.argv[1]);"
            "print(c.query('SELECT count() FROM movies.views FINAL').result_rows[0][0])",
            dsn,
        ],
        check=True,
        capture_output=True,
        text=True,
    ).stdout.split()[-1]
    assert count == "1"


def test_each_function_worker_collects_cycles_rarely_and_sets_its_process_up_once(
    settings: Settings, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Built on a worker's first request; the collector is tuned there, after the fork.
    thresholds: list[int] = []
    logging_named: list[str] = []
    monkeypatch.setattr(bootstrap, "get_settings", lambda: settings)
    monkeypatch.setattr(bootstrap, "_set_up_as", [])
    monkeypatch.setattr(
        bootstrap, "configure_logging", lambda _settings, service: logging_named.append(service)
    )
    monkeypatch.setattr(bootstrap, "collect_cycles_rarely", thresholds.append)
    main = functions_main(monkeypatch)
    for build in (main._ingest_api, main._cloud_event_sink, main._connector_sink):
        build.cache_clear()
        build()
        build.cache_clear()
    assert thresholds == [50_000, 50_000, 50_000]
    # One process, one set-up, named by what it started as (functions.local builds the ingest
    # target after starting as "local").
    assert logging_named == ["watch-progress-ingest"]


def test_collect_cycles_rarely_freezes_start_up_objects_and_raises_the_threshold() -> None:
    before = gc.get_threshold()
    try:
        collect_cycles_rarely(50_000)
        assert gc.get_threshold()[0] == 50_000
        assert gc.get_freeze_count() > 0
    finally:
        gc.unfreeze()
        gc.set_threshold(*before)
