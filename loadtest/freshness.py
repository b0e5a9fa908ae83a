"""Scenario 4: how soon an accepted event is readable, under a steady ingest load.

The local host (ingest API and sink in one process) takes a paced background load; meanwhile a
probe every 500 ms posts a position for a fresh (viewer, movie) and, from its 202 on, reads
``GET /v1/views/{movie_id}/position`` every 100 ms until that position comes back. (Polling every
20 ms loaded the one process that ingests, stores and answers enough to double the p99.)
Freshness is the time from the 202 to that read: the sink's batch window
(``SINK_BATCH_MAX_WAIT_MS``, 500 ms), the insert, the query and up to 100 ms of polling.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from typing import Any

import httpx

from loadtest.harness import Harness, Profile, progress, start_local_host
from loadtest.load import python_load, quantile
from loadtest.request_pool import sign

__all__ = ["run_freshness"]

_PROBE_EVERY = 0.5
_READ_EVERY = 0.1
_GIVE_UP_AFTER = 15.0


async def _probe(client: httpx.AsyncClient, secret: str, offset: int) -> float | None:
    """Seconds from the 202 to the position being readable; None if it never was."""
    viewer, movie = uuid.uuid4(), uuid.uuid4()
    headers = {"Authorization": f"Bearer {sign(viewer, secret)}"}
    answer = await client.post(
        "/v1/views", json={"movie_id": str(movie), "movie_time_offset": offset}, headers=headers
    )
    accepted = time.monotonic()
    if answer.status_code != 202:
        return None
    while time.monotonic() - accepted < _GIVE_UP_AFTER:
        read = await client.get(f"/v1/views/{movie}/position", headers=headers)
        if read.status_code == 200 and read.json()["movie_time_offset"] == offset:
            return time.monotonic() - accepted
        await asyncio.sleep(_READ_EVERY)
    return None


async def _measure(harness: Harness, profile: Profile, url: str) -> dict[str, Any]:
    async with httpx.AsyncClient(base_url=url, timeout=10) as client:
        background = asyncio.create_task(
            python_load(url, harness.pool, 8, profile.freshness_seconds, profile.freshness_rate)
        )
        probes = []
        offset = 0
        while not background.done():
            offset += 1
            probes.append(asyncio.create_task(_probe(client, harness.secret, offset)))
            await asyncio.sleep(_PROBE_EVERY)
        load = await background
        outcomes = await asyncio.gather(*probes)
    seen = sorted(o for o in outcomes if o is not None)
    return {
        "probes": len(outcomes),
        "never_readable": len(outcomes) - len(seen),
        "p50_ms": quantile(seen, 0.50) * 1000,
        "p99_ms": quantile(seen, 0.99) * 1000,
        "max_ms": (seen[-1] if seen else 0.0) * 1000,
        "background_rate": load.rate,
        "background_errors": load.errors,
    }


def run_freshness(harness: Harness, profile: Profile) -> dict[str, Any]:
    service, url, _topic = start_local_host(
        harness, "freshness", harness.scratch / "clickhouse-freshness"
    )
    try:
        progress(
            f"freshness: {profile.freshness_seconds:g} s at {profile.freshness_rate:g} req/s"
            " background, a probe every 500 ms"
        )
        result = asyncio.run(_measure(harness, profile, url))
        service.check_running()
    finally:
        service.stop()
    progress(
        f"  freshness p50 {result['p50_ms']:.0f} ms, p99 {result['p99_ms']:.0f} ms,"
        f" {result['never_readable']} of {result['probes']} probes never readable"
    )
    return result
