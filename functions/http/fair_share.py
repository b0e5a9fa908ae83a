"""Fair share between callers: a token bucket per caller, and one shared computation of an
answer that every caller would otherwise ask the store for.

The buckets are a dict of (tokens, last refill) refilled lazily on use, written here rather than
taken from a library: the ones on PyPI either wait instead of refusing (aiolimiter), do not say
when the next token comes (token-bucket, needed for ``Retry-After``), or keep keys without bound
or behind a lock and a cleaner thread (limits); here one dict operation per request suffices.
"""

from __future__ import annotations

import asyncio
import math
import time
from collections.abc import Awaitable, Callable, Hashable
from typing import Generic, TypeVar

from functions.errors import RateLimited

__all__ = ["SharedRefresh", "TokenBuckets"]

Value = TypeVar("Value")

# Callers remembered at once. Forgetting the least recently seen one hands it a full bucket
# again, which only matters to a caller with more addresses than this; each entry is ~200 bytes.
MAX_CALLERS = 50_000


class TokenBuckets:
    """A bucket of ``burst`` tokens per caller, refilled at ``rate`` a second; a request takes
    one, and a caller with an empty bucket is refused with the time until the next token."""

    def __init__(
        self,
        rate: float,
        burst: int,
        max_callers: int = MAX_CALLERS,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if rate <= 0:
            raise ValueError("a rate limit needs a positive rate")
        self._rate = rate
        self._burst = float(burst)
        self._max_callers = max_callers
        self._clock = clock
        self._buckets: dict[Hashable, tuple[float, float]] = {}  # caller -> (tokens, at)

    def take(self, caller: Hashable) -> None:
        """One token of ``caller``'s bucket, else ``RateLimited`` with the seconds to wait."""
        now = self._clock()
        # pop and re-insert: the dict's order is then least recently seen first.
        tokens, at = self._buckets.pop(caller, (self._burst, now))
        tokens = min(self._burst, tokens + (now - at) * self._rate)
        refused = tokens < 1
        self._buckets[caller] = (tokens if refused else tokens - 1, now)
        if len(self._buckets) > self._max_callers:
            del self._buckets[next(iter(self._buckets))]
        if refused:
            raise RateLimited(max(1, math.ceil((1 - tokens) / self._rate)))


class SharedRefresh(Generic[Value]):
    """The result of ``compute``, recomputed at most once per ``max_age_seconds`` and shared:
    callers arriving during a computation wait for that one instead of starting another."""

    def __init__(
        self,
        compute: Callable[[], Awaitable[Value]],
        max_age_seconds: float,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._compute = compute
        self._max_age = max_age_seconds
        self._clock = clock
        self._value: tuple[Value, float] | None = None  # (value, computed at)
        self._pending: asyncio.Future[Value] | None = None

    async def get(self) -> Value:
        if self._value is not None and self._clock() - self._value[1] < self._max_age:
            return self._value[0]
        if self._pending is None:
            self._pending = asyncio.ensure_future(self._refresh())
        # shield: a caller that goes away does not cancel the computation the others wait for.
        return await asyncio.shield(self._pending)

    async def _refresh(self) -> Value:
        started = self._clock()
        try:
            value = await self._compute()
        finally:
            self._pending = None
        self._value = (value, started)
        return value
