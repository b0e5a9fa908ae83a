"""Error reports to Sentry (``SENTRY_DSN``): what an operator must act on, grouped, bounded and
without secrets.

Reported: every log record at WARNING or above (the unhandled exception behind each 500, Kafka
not acknowledging, ClickHouse refusing inserts and the sink's retries, JWKS failures, ...), and
every record sent to the dead-letter topic (``report_dead_letter``), with its origin and reason.
Each group (a dead-letter reason; a log call site) is one Sentry issue and sends at most
``EVENTS_PER_GROUP_PER_MINUTE`` events a minute from a process; the next event sent says how
many were left out. Events carry the OpenTelemetry trace id when a span is current. Nothing
secret leaves: ``send_default_pii`` off (``data_collection``: no local variables, no bodies,
no cookies, a few harmless headers), and ``scrub`` removes credentials from whatever is left.
"""

from __future__ import annotations

import logging
import re
import threading
import time
from collections.abc import Callable
from importlib.metadata import PackageNotFoundError, version
from typing import Any

import sentry_sdk
from sentry_sdk.integrations.logging import LoggingIntegration
from sentry_sdk.types import Event, Hint

from functions.settings import Settings
from functions.telemetry import current_trace_ids

__all__ = [
    "EVENTS_PER_GROUP_PER_MINUTE",
    "GroupLimit",
    "configure_error_reports",
    "report_dead_letter",
    "scrub",
]

EVENTS_PER_GROUP_PER_MINUTE = 10
_PACKAGE = "watch-progress"
_FILTERED = "[Filtered]"
_SAFE_HEADERS = ("content-type", "content-length", "user-agent", "traceparent")
_SECRET_HEADERS = frozenset(
    {"authorization", "proxy-authorization", "cookie", "set-cookie", "x-api-key"}
)
# A JWT (three base64url parts, the first a JSON object) or a bearer credential, anywhere.
_CREDENTIAL = re.compile(r"eyJ[\w-]*\.[\w-]*\.[\w-]*|(?i:bearer)\s+[\w.~+/=-]+")
_ADMITTED = "admitted"  # hint key: the event was admitted by its group's limit already


class GroupLimit:
    """At most ``per_window`` events per group and window; counts the ones left out."""

    def __init__(
        self,
        per_window: int,
        window_seconds: float = 60.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._per_window = per_window
        self._window_seconds = window_seconds
        self._clock = clock
        self._lock = threading.Lock()
        # group -> (window start, events admitted in it, events left out since the last admitted)
        self._groups: dict[str, tuple[float, int, int]] = {}

    def admit(self, group: str) -> int | None:
        """None if the event is to be dropped; otherwise how many of the group were dropped
        since the last one admitted."""
        now = self._clock()
        with self._lock:
            started, admitted, dropped = self._groups.get(group, (now, 0, 0))
            if now - started >= self._window_seconds:
                started, admitted = now, 0
            if admitted >= self._per_window:
                self._groups[group] = (started, admitted, dropped + 1)
                return None
            self._groups[group] = (started, admitted + 1, 0)
            return dropped


_limit = GroupLimit(EVENTS_PER_GROUP_PER_MINUTE)


def configure_error_reports(settings: Settings) -> None:
    """Start reporting to Sentry if ``SENTRY_DSN`` is set; otherwise do nothing."""
    global _limit
    if settings.sentry_dsn is None:
        return
    _limit = GroupLimit(EVENTS_PER_GROUP_PER_MINUTE)
    sentry_sdk.init(
        dsn=settings.sentry_dsn,
        environment=settings.sentry_environment,
        release=settings.sentry_release or _package_version(),
        # send_default_pii stays off (its default); data_collection, its successor, says what
        # the integrations may collect: no user, cookies, bodies, query strings, nor the local
        # variables of frames (they hold tokens and bodies); headers only from a short list.
        data_collection={
            "user_info": False,
            "cookies": {"mode": "off"},
            "http_headers": {"request": {"mode": "allowlist", "terms": list(_SAFE_HEADERS)}},
            "http_bodies": [],
            "url_query_params": {"mode": "off"},
            "stack_frame_variables": False,
        },
        # Only the integrations chosen here: no framework integration reads requests, and
        # traces are OpenTelemetry's (stdout is the one log path, so no Sentry logs either).
        auto_enabling_integrations=False,
        integrations=[LoggingIntegration(level=logging.INFO, event_level=logging.WARNING)],
        before_send=_before_send,
        before_breadcrumb=lambda crumb, _hint: scrub(crumb),
    )


def report_dead_letter(
    topic: str, partition: int, offset: int, reason: str, detail: str, dlq_topic: str
) -> None:
    """Report one record sent to the dead-letter topic (grouped by ``reason``)."""
    if not sentry_sdk.get_client().is_active():
        return
    dropped = _limit.admit(f"dead-letter:{reason}")
    if dropped is None:
        return
    event: Event = {
        "level": "warning",
        "logger": "functions.sink.dlq",
        "message": f"invalid record dead-lettered: {reason}",
        "fingerprint": ["dead-letter", reason],
        "tags": {"dead_letter.reason": reason, "kafka.topic": topic},
        "contexts": {
            "dead_letter": {
                "topic": topic,
                "partition": partition,
                "offset": offset,
                "reason": reason,
                "detail": detail,
                "dead_letter_topic": dlq_topic,
            }
        },
        "extra": {"not_reported_since_last": dropped},
    }
    sentry_sdk.capture_event(event, hint={_ADMITTED: True})


def _before_send(event: Event, hint: Hint) -> Event | None:
    if not hint.get(_ADMITTED):
        dropped = _limit.admit(_group(event, hint))
        if dropped is None:
            return None
        event.setdefault("extra", {})["not_reported_since_last"] = dropped
    ids = current_trace_ids()
    if ids is not None:  # Sentry's own trace context becomes OpenTelemetry's, too
        trace_id, span_id = ids
        event.setdefault("tags", {})["trace_id"] = trace_id
        sentry_trace = event.setdefault("contexts", {}).setdefault("trace", {})
        sentry_trace.update(trace_id=trace_id, span_id=span_id)
    scrubbed: Event = scrub(event)
    return scrubbed


def _group(event: Event, hint: Hint) -> str:
    """The rate-limit group: a log call site (logger and message template), else the
    exception type."""
    record = hint.get("log_record")
    if isinstance(record, logging.LogRecord):
        return f"log:{record.name}:{record.msg}"
    exception = hint.get("exc_info")
    if exception:
        return f"exception:{exception[0].__name__}"
    return f"event:{event.get('logger')}:{event.get('message')}"


def scrub(value: Any) -> Any:
    """``value`` (an event, a breadcrumb) without credentials or request bodies."""
    if isinstance(value, dict):
        scrubbed = {}
        for key, item in value.items():
            if isinstance(key, str) and key.lower() in _SECRET_HEADERS:
                scrubbed[key] = _FILTERED
            elif key == "request" and isinstance(item, dict):
                request = {k: v for k, v in item.items() if k not in ("data", "cookies")}
                scrubbed[key] = scrub(request)
            else:
                scrubbed[key] = scrub(item)
        return scrubbed
    if isinstance(value, list | tuple):
        return [scrub(item) for item in value]
    if isinstance(value, str):
        return _CREDENTIAL.sub(_FILTERED, value)
    return value


def _package_version() -> str | None:
    try:
        return version(_PACKAGE)
    except PackageNotFoundError:
        return None
