"""Scenarios 1 and 2: POST /v1/views at fixed concurrency, ours against the seed's stack, and
ours with every request traced (OpenTelemetry, always-on sampler, OTLP to a local collector).

The servers run side by side on the same broker, one worker process each, each producing to its
own topic; runs alternate (ours, traced, baseline, ours, ...) so that drift of this shared
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

OURS, TRACED, BASELINE = "ours", "traced", "baseline"  # traced: ours, every request traced
SYSTEMS = (OURS, TRACED, BASELINE)


def _argv(system: str, port: int) -> list[str]:
    if system in (OURS, TRACED):  # as deployed: functions-framework, gunicorn + uvicorn worker
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
    main_before, other_before = service.thread_cpu_seconds()
    started = time.monotonic()
    load = _load(harness, profile, url, concurrency, profile.ingest_seconds)
    wall = time.monotonic() - started
    server_cpu = service.cpu_seconds() - server_before
    main_after, other_after = service.thread_cpu_seconds()
    requests = max(1, load.requests)
    broker_cpu = harness.broker_cpu_seconds() - broker_before
    acknowledged = harness.topic_size(topic) - records_before
    return {
        **asdict(load),
        "rate": load.rate,
        "server_cores": server_cpu / wall,
        # Where a request's CPU goes: the event loop's thread (and with it every request), and
        # the others (span export, metric reader, librdkafka's threads).
        "server_main_thread_us": (main_after - main_before) / requests * 1e6,
        "server_other_threads_us": (other_after - other_before) / requests * 1e6,
        "broker_cores": broker_cpu / wall,
        "generator_cores": load.generator_cpu_seconds / wall,
        "server_rss_mb": service.rss_bytes() / 2**20,
        "records_in_kafka": acknowledged,
        "every_2xx_in_kafka": acknowledged >= load.succeeded,
    }


# The broker's JVM compiles its hot paths under its first load: in a probe its CPU per request
# fell from ~750 to ~110 µs over the first ~40 s, and ours, which waits for every ack, ran at
# half speed meanwhile. Warm-up rounds go on until that cost stops falling.
_WARMUP_ROUNDS = (2, 8)  # at least, at most
_WARMUP_SETTLED = 0.9  # a round's cost per request at least this fraction of the one before


def _warm_up(harness: Harness, profile: Profile, urls: list[str]) -> list[float]:
    """Rounds of load on every server in turn until the broker is warm; returns the broker's
    CPU per request (µs) of each round, also shown as progress."""
    fewest, most = _WARMUP_ROUNDS
    concurrency = max(profile.ingest_concurrency)
    costs: list[float] = []
    while len(costs) < most:
        broker_before, requests = harness.broker_cpu_seconds(), 0
        for url in urls:
            requests += _load(harness, profile, url, concurrency, profile.warmup_seconds).requests
        costs.append((harness.broker_cpu_seconds() - broker_before) / max(1, requests) * 1e6)
        progress(f"ingest: warm-up round {len(costs)}, broker {costs[-1]:.0f} µs CPU a request")
        if len(costs) >= fewest and costs[-1] >= _WARMUP_SETTLED * costs[-2]:
            break
    return costs


def run_ingest(
    harness: Harness, profile: Profile, free_port: Any
) -> tuple[list[dict[str, Any]], list[float]]:
    """Interleaved runs of both systems at each concurrency, one dict per run; and the broker's
    CPU per request in each warm-up round."""
    runs: list[dict[str, Any]] = []
    with ExitStack() as stack:
        servers: dict[str, tuple[Service, str, str]] = {}
        for system in SYSTEMS:
            port = free_port()
            topic = harness.new_topic(f"views-{system}")
            env = harness.function_env(topic, harness.scratch / f"unused-{system}", WORKERS="1")
            if system == TRACED:
                env.update(harness.traced_env())
            service = stack.enter_context(
                harness.service(f"ingest-{system}", _argv(system, port), env)
            )
            url = f"http://127.0.0.1:{port}"
            service.wait_http(f"{url}/healthz")
            servers[system] = (service, url, topic)
        warm_up = _warm_up(harness, profile, [url for _service, url, _topic in servers.values()])
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
    return runs, warm_up
