"""Readiness: whether the dependencies of a function answer now (``GET /readyz``).

Each dependency has a blocking check, run in a thread. A probe reads the last state and, when it
is more than ``REFRESH_SECONDS`` old, starts one refresh in the background: however many probes
come, a dependency is asked at most about once a second, and a probe never waits on a dependency
(except the very first, which has no state to read). A check still running from an earlier
refresh counts as "not ready" and is not started twice. Why a check failed goes to the log; the
answer only names the dependency.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Mapping

import orjson
from starlette.responses import Response

from functions.problems import problem_response

__all__ = ["CHECK_TIMEOUT_SECONDS", "REFRESH_SECONDS", "Check", "Readiness"]

log = logging.getLogger(__name__)

REFRESH_SECONDS = 1.0
# A dependency that has not answered within this is not ready; its check may go on running.
CHECK_TIMEOUT_SECONDS = 2.0

Check = Callable[[], bool]  # blocking; True when the dependency can serve now


class Readiness:
    """The cached readiness of named dependencies."""

    def __init__(self, checks: Mapping[str, Check]) -> None:
        self._checks = dict(checks)
        self._ready: dict[str, bool] | None = None
        self._checked_at = 0.0
        self._refresh: asyncio.Task[None] | None = None
        self._running: dict[str, asyncio.Task[tuple[bool, str]]] = {}

    async def state(self) -> dict[str, bool]:
        """Each dependency's readiness, refreshed if stale."""
        if self._refresh is None and time.monotonic() - self._checked_at >= REFRESH_SECONDS:
            self._refresh = asyncio.create_task(self._check_all())
        if self._ready is None:
            assert self._refresh is not None
            await asyncio.shield(self._refresh)
        assert self._ready is not None
        return dict(self._ready)

    async def response(self) -> Response:
        """200 ``{"status": "ready", ...}``, or a 503 problem naming what is not ready."""
        state = await self.state()
        dependencies = {name: "ready" if ready else "not ready" for name, ready in state.items()}
        if all(state.values()):
            body = orjson.dumps({"status": "ready", "dependencies": dependencies})
            return Response(body, media_type="application/json")
        waiting = ", ".join(name for name, ready in state.items() if not ready)
        return problem_response(
            503,
            f"not ready: {waiting}",
            headers={"Retry-After": f"{REFRESH_SECONDS:.0f}"},
            dependencies=dependencies,
        )

    async def _check_all(self) -> None:
        try:
            for name, check in self._checks.items():
                if name not in self._running:
                    self._running[name] = asyncio.create_task(asyncio.to_thread(_run, check))
            await asyncio.wait(self._running.values(), timeout=CHECK_TIMEOUT_SECONDS)
            outcomes = {name: self._outcome(name) for name in self._checks}
            for name, (ready, reason) in outcomes.items():
                if self._ready is not None and self._ready[name] == ready:
                    continue  # logged when it changed, not at every refresh
                if ready:
                    log.info("%s is ready", name)
                else:
                    log.warning("%s is not ready: %s", name, reason)
            self._ready = {name: ready for name, (ready, _) in outcomes.items()}
        finally:
            self._checked_at = time.monotonic()
            self._refresh = None

    def _outcome(self, name: str) -> tuple[bool, str]:
        """Whether the dependency is ready, and why not."""
        task = self._running[name]
        if not task.done():
            return False, f"no answer within {CHECK_TIMEOUT_SECONDS:g} s"
        del self._running[name]
        return task.result()


def _run(check: Check) -> tuple[bool, str]:
    # Never raises: a check that ends after its app (and event loop) did must not be an error.
    try:
        return (True, "") if check() else (False, "its check says no")
    except Exception as exc:
        return False, f"{type(exc).__name__}: {exc}"
