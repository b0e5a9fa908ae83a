"""The per-caller token buckets and the shared ranking computation, on a controlled clock."""

from __future__ import annotations

import asyncio

import pytest

from functions.errors import RateLimited
from functions.http.fair_share import SharedRefresh, TokenBuckets


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_a_caller_gets_its_burst_then_waits_for_the_rate() -> None:
    clock = Clock()
    buckets = TokenBuckets(rate=2, burst=5, clock=clock)
    for _ in range(5):
        buckets.take("player")
    with pytest.raises(RateLimited) as refused:
        buckets.take("player")
    assert refused.value.retry_after_seconds == 1
    buckets.take("other player")  # one caller's flood is not another's
    clock.now += 0.5  # one token back at 2 a second
    buckets.take("player")
    with pytest.raises(RateLimited):
        buckets.take("player")


def test_refusals_do_not_dig_the_bucket_deeper() -> None:
    clock = Clock()
    buckets = TokenBuckets(rate=1, burst=1, clock=clock)
    buckets.take("flooder")
    for _ in range(100):
        with pytest.raises(RateLimited):
            buckets.take("flooder")
    clock.now += 1
    buckets.take("flooder")


def test_the_least_recently_seen_caller_is_forgotten_beyond_the_bound() -> None:
    clock = Clock()
    buckets = TokenBuckets(rate=1, burst=1, max_callers=2, clock=clock)
    for caller in ("a", "b", "c"):
        buckets.take(caller)
    buckets.take("a")  # forgotten: a full bucket again
    with pytest.raises(RateLimited):
        buckets.take("c")


def test_concurrent_callers_share_one_computation_until_it_is_stale() -> None:
    clock = Clock()
    computations = 0

    async def compute() -> int:
        nonlocal computations
        computations += 1
        await asyncio.sleep(0.01)
        return computations

    async def scenario() -> None:
        shared = SharedRefresh(compute, max_age_seconds=5, clock=clock)
        assert set(await asyncio.gather(*(shared.get() for _ in range(50)))) == {1}
        clock.now += 4
        assert await shared.get() == 1
        clock.now += 2
        assert set(await asyncio.gather(*(shared.get() for _ in range(50)))) == {2}

    asyncio.run(scenario())
    assert computations == 2


def test_a_failed_computation_is_not_kept() -> None:
    attempts = 0

    async def compute() -> int:
        nonlocal attempts
        attempts += 1
        if attempts == 1:
            raise ConnectionError("store down")
        return attempts

    async def scenario() -> None:
        shared = SharedRefresh(compute, max_age_seconds=60)
        with pytest.raises(ConnectionError):
            await shared.get()
        assert await shared.get() == 2

    asyncio.run(scenario())
