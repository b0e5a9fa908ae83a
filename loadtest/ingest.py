"""Scenarios 1 and 2: POST /v1/views at fixed concurrency, ours against the seed's stack.

Both servers run side by side on the same broker, one worker process each, each producing to its
own topic; runs alternate (ours, baseline, ours, baseline, ...) so that drift of this shared
machine hits both alike. After each run the topic must have grown by at least the number of 2xx
answers: every 2xx was acknowledged by Kafka (requests still in flight when the load stopped may
add a few more records).
"""

from __future__ import annotations

import asyncio
import time
from contextlib import ExitStack
from dataclasses import asdict
from typing import Any

from loadtest.harness import Harness, Profile, progress
from loadtest.load import LoadResult, python_load, wrk_load
from loadtest.processes import BIN, Service

__all__ = ["SYSTEMS", "run_ingest"]

OURS, BASELINE = "ours", "baseline"
SYSTEMS = (OURS, BASELINE)


def _argv(system: str, port: int) -> list[str]:
    if system == OURS:  # as deployed: functions-framework, gunicorn + uvicorn worker
        return [
            *(str(BIN / "functions-framework"), "--target", "ingest"),
            *(
                "--source",
                "functions/main.py",
                "--asgi",
                "--host",
                "127.0.0.1",
                "--port",
                str(port),
            ),
        ]
    return [
        *(str(BIN / "uvicorn"), "loadtest.baseline.app:app", "--host", "127.0.0.1"),
        *("--port", str(port), "--no-access-log", "--log-level", "warning"),
    ]


def _load(
    harness: Harness, profile: Profile, url: str, concurrency: int, seconds: float
) -> LoadResult:
    if profile.generator == "wrk":
        return wrk_load(url, harness.pool_file, concurrency, seconds)
    return asyncio.run(python_load(url, harness.pool, concurrency, seconds))


def _measured_run(
    harness: Harness,
    profile: Profile,
    service: Service,
    url: str,
    topic: str,
    concurrency: int,
) -> dict[str, Any]:
    records_before = harness.topic_size(topic)
    server_before, broker_before = service.cpu_seconds(), harness.broker_cpu_seconds()
    started = time.monotonic()
    load = _load(harness, profile, url, concurrency, profile.ingest_seconds)
    wall = time.monotonic() - started
    server_cpu = service.cpu_seconds() - server_before
    broker_cpu = harness.broker_cpu_seconds() - broker_before
    acknowledged = harness.topic_size(topic) - records_before
    return {
        **asdict(load),
        "rate": load.rate,
        "server_cores": server_cpu / wall,
        "broker_cores": broker_cpu / wall,
        "generator_cores": load.generator_cpu_seconds / wall,
        "server_rss_mb": service.rss_bytes() / 2**20,
        "records_in_kafka": acknowledged,
        "every_2xx_in_kafka": acknowledged >= load.succeeded,
    }


def _warm_up(harness: Harness, profile: Profile, urls: dict[str, str]) -> None:
    """Load each server in turn; progress shows the broker's CPU per request, which falls while
    its JVM compiles its hot paths: in a probe from ~750 to ~110 µs over the first ~40 s of
    load, and ours, which waits for every ack, ran at half speed meanwhile."""
    for system, url in urls.items():
        broker_before = harness.broker_cpu_seconds()
        load = _load(harness, profile, url, max(profile.ingest_concurrency), profile.warmup_seconds)
        per_request = (harness.broker_cpu_seconds() - broker_before) / max(1, load.requests)
        progress(f"ingest: warm-up of {system}, broker {per_request * 1e6:.0f} µs CPU a request")


def run_ingest(harness: Harness, profile: Profile, free_port: Any) -> list[dict[str, Any]]:
    """Interleaved runs of both systems at each concurrency; one dict per run."""
    runs: list[dict[str, Any]] = []
    with ExitStack() as stack:
        servers: dict[str, tuple[Service, str, str]] = {}
        for system in SYSTEMS:
            port = free_port()
            topic = harness.new_topic(f"views-{system}")
            env = harness.function_env(topic, harness.scratch / f"unused-{system}", WORKERS="1")
            service = stack.enter_context(
                harness.service(f"ingest-{system}", _argv(system, port), env)
            )
            url = f"http://127.0.0.1:{port}"
            service.wait_http(f"{url}/healthz")
            servers[system] = (service, url, topic)
        _warm_up(harness, profile, {system: url for system, (_s, url, _t) in servers.items()})
        for concurrency in profile.ingest_concurrency:
            for repeat in range(1, profile.repeats + 1):
                for system, (service, url, topic) in servers.items():
                    progress(
                        f"ingest: c={concurrency} run {repeat}/{profile.repeats} {system}"
                        f" ({profile.ingest_seconds:g} s)"
                    )
                    run = _measured_run(harness, profile, service, url, topic, concurrency)
                    run.update(system=system, concurrency=concurrency, repeat=repeat)
                    service.check_running()
                    kafka_check = "all" if run["every_2xx_in_kafka"] else "NOT ALL"
                    progress(
                        f"  {run['rate']:8.0f} req/s  p50 {run['p50_ms']:.1f} ms"
                        f"  p99 {run['p99_ms']:.1f} ms  errors {run['errors']}"
                        f"  server {run['server_cores']:.2f} cores  {kafka_check} 2xx in Kafka"
                    )
                    runs.append(run)
    return runs
