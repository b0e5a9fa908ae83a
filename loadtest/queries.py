"""Scenario 5: reads on a loaded store, through the HTTP API.

``python -m loadtest.chtool generate`` writes the synthetic events inside ClickHouse first
(progress on stderr); the local host then serves (a) latest-position lookups of random
(viewer, movie) pairs that exist, a few at a time, and (b) the most-watched ranking over all
events while a paced ingest load runs, as the original assignment required. Lookups run one at a
time and a few at a time: the embedded engine answers one query at a time, so the second figure
shows the queueing that a ClickHouse server (``CLICKHOUSE_DSN=http://...``) would not add.
"""

from __future__ import annotations

import asyncio
import random
import subprocess
import time
import uuid
from typing import Any

import httpx

from loadtest.chtool import synthetic_ids
from loadtest.harness import Harness, Profile, progress, start_local_host
from loadtest.load import python_load, quantile
from loadtest.report import describe_queries
from loadtest.request_pool import sign

__all__ = ["LOOKUP_CONCURRENCIES", "run_queries"]

LOOKUP_CONCURRENCIES = (1, 4)


async def _lookups(
    client: httpx.AsyncClient, secret: str, rows: int, count: int, concurrency: int
) -> list[float]:
    rng = random.Random(5)
    pending = [rng.randrange(rows) for _ in range(count)]
    latencies: list[float] = []
    tokens: dict[uuid.UUID, str] = {}  # a player keeps its token for minutes

    async def worker() -> None:
        while pending:
            viewer, movie = synthetic_ids(pending.pop())
            if viewer not in tokens:
                tokens[viewer] = sign(viewer, secret)
            headers = {"Authorization": f"Bearer {tokens[viewer]}"}
            started = time.monotonic()
            answer = await client.get(f"/v1/views/{movie}/position", headers=headers)
            latencies.append(time.monotonic() - started)
            answer.raise_for_status()

    await asyncio.gather(*(worker() for _ in range(concurrency)))
    return sorted(latencies)


async def _aggregates_under_load(
    harness: Harness, client: httpx.AsyncClient, url: str, profile: Profile
) -> tuple[list[float], float]:
    headers = {"Authorization": f"Bearer {harness.pool[0].token}"}
    seconds = 3600.0  # cancelled below, once the aggregates are done
    background = asyncio.create_task(
        python_load(url, harness.pool, 8, seconds, profile.freshness_rate)
    )
    await asyncio.sleep(1)  # the load is running before the first aggregate
    durations = []
    for _ in range(profile.aggregate_runs):
        started = time.monotonic()
        answer = await client.get("/v1/movies/most-watched?limit=10", headers=headers)
        durations.append(time.monotonic() - started)
        answer.raise_for_status()
    background.cancel()
    return durations, profile.freshness_rate


def run_queries(harness: Harness, profile: Profile) -> dict[str, Any]:
    clickhouse = harness.scratch / "clickhouse-queries"
    clickhouse.mkdir()
    rows = profile.query_events
    progress(f"queries: generating {rows:,} events in ClickHouse")
    env = harness.function_env("unused", clickhouse)
    started = time.monotonic()
    subprocess.run(
        harness.python("-m", "loadtest.chtool", "generate", "--rows", str(rows)),
        env={**env},
        check=True,
    )
    generate_seconds = time.monotonic() - started
    service, url, _topic = start_local_host(harness, "queries", clickhouse)
    try:

        async def measure() -> tuple[dict[int, list[float]], list[float]]:
            lookups = {}
            async with httpx.AsyncClient(base_url=url, timeout=60) as client:
                for concurrency in LOOKUP_CONCURRENCIES:
                    progress(
                        f"queries: {profile.query_lookups:,} position lookups,"
                        f" {concurrency} at a time"
                    )
                    lookups[concurrency] = await _lookups(
                        client, harness.secret, rows, profile.query_lookups, concurrency
                    )
                progress(
                    f"queries: {profile.aggregate_runs} most-watched aggregates under"
                    f" {profile.freshness_rate:g} req/s ingest"
                )
                aggregates, _rate = await _aggregates_under_load(harness, client, url, profile)
            return lookups, aggregates

        lookups, aggregates = asyncio.run(measure())
        service.check_running()
    finally:
        service.stop()
    result = {
        "events": rows,
        "generate_seconds": generate_seconds,
        "lookups": [
            {
                "concurrency": concurrency,
                "count": len(latencies),
                "p50_ms": quantile(latencies, 0.5) * 1000,
                "p99_ms": quantile(latencies, 0.99) * 1000,
            }
            for concurrency, latencies in lookups.items()
        ],
        "aggregate_runs_ms": [d * 1000 for d in aggregates],
        "aggregate_median_ms": quantile(sorted(aggregates), 0.5) * 1000,
        "aggregate_max_ms": max(aggregates) * 1000,
        "ingest_during_aggregates_rate": profile.freshness_rate,
    }
    progress(f"  {describe_queries(result)}")
    return result
