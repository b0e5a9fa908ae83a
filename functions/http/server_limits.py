"""Limits of the HTTP server below the app: header size, request deadline, idle connections,
connection cap, headers on every answer. One definition for both servers: ``uvicorn_limits``
gives the ``uvicorn.Config`` arguments that ``functions/local.py`` passes, and
``BoundedUvicornWorker`` (gunicorn's worker class in the image, ``gunicorn_config.py``) applies
the same.

uvicorn's httptools parser keeps an unfinished header line in memory without bound and has no
deadline for a request to arrive; h11 bounds the header bytes (``h11_max_incomplete_event_size``)
but parses more slowly (docs/security.md has both measured). So the server keeps httptools and
``GuardedHttpToolsProtocol`` adds what it lacks: a header budget counted on the bytes as they
arrive (431 and close beyond it), a deadline from a request's first byte to its last (408 and
close) and an idle timer from the moment a connection opens.
"""

from __future__ import annotations

import asyncio
import logging
import resource
from dataclasses import dataclass
from typing import Any, ClassVar

from uvicorn.protocols.http.httptools_impl import STATUS_LINE, HttpToolsProtocol
from uvicorn_worker import UvicornWorker  # type: ignore[import-untyped]

from functions.problems import PROBLEM_CONTENT_TYPE, problem_body
from functions.settings import Settings, get_settings

__all__ = [
    "BoundedUvicornWorker",
    "GuardedHttpToolsProtocol",
    "RequestLimits",
    "connection_cap",
    "uvicorn_limits",
]

log = logging.getLogger(__name__)

# Sent with every answer the server writes, the app's and its own (400, 503): browsers must not
# guess a type for a problem document or a JSON answer.
SERVER_HEADERS = [("X-Content-Type-Options", "nosniff")]

# Files a server process needs besides its client connections: the listening socket, Kafka and
# ClickHouse connections, logs, the interpreter's own.
_FILES_KEPT_FOR_THE_PROCESS = 256


@dataclass(frozen=True, slots=True)
class RequestLimits:
    max_header_bytes: int
    request_timeout_seconds: float


class GuardedHttpToolsProtocol(HttpToolsProtocol):
    """uvicorn's httptools protocol with a header budget, a request deadline and an idle timer
    from the first byte on; subclasses set ``limits`` (``guarded_protocol``)."""

    limits: ClassVar[RequestLimits]

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._awaiting_headers = True
        self._header_room = self.limits.max_header_bytes
        self._request_deadline: asyncio.TimerHandle | None = None

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        # uvicorn arms its keep-alive timer only after a response: a connection that never
        # sends a byte would otherwise hold its file forever.
        self.timeout_keep_alive_task = self.loop.call_later(
            self.timeout_keep_alive, self.timeout_keep_alive_handler
        )

    def connection_lost(self, exc: Exception | None) -> None:
        self._cancel_deadline()
        super().connection_lost(exc)

    def data_received(self, data: bytes) -> None:
        if self._awaiting_headers:
            if len(data) > self._header_room:
                # Parse only what fits: if the headers end in it, the rest is body.
                head, data = data[: self._header_room], data[self._header_room :]
                self._header_room = 0
                super().data_received(head)
                if self.transport.is_closing():
                    return
                if self._awaiting_headers:
                    self._refuse(431, "the request line and headers are over the size limit")
                    return
            else:
                self._header_room -= len(data)
        super().data_received(data)

    def on_message_begin(self) -> None:
        super().on_message_begin()
        self._request_deadline = self.loop.call_later(
            self.limits.request_timeout_seconds, self._request_timed_out
        )

    def on_headers_complete(self) -> None:
        self._awaiting_headers = False
        super().on_headers_complete()

    def on_message_complete(self) -> None:
        self._cancel_deadline()
        self._awaiting_headers = True
        self._header_room = self.limits.max_header_bytes
        super().on_message_complete()

    def _cancel_deadline(self) -> None:
        if self._request_deadline is not None:
            self._request_deadline.cancel()
            self._request_deadline = None

    def _request_timed_out(self) -> None:
        self._request_deadline = None
        if self.transport.is_closing():
            return
        cycle = self.cycle
        if self._awaiting_headers or not cycle.response_started:
            if not self._awaiting_headers:
                cycle.disconnected = True  # the app's reads end, its answer is not written
            self._refuse(408, "the request did not arrive in time")
        else:  # answered already (say a 413), but the body still trickles in
            self.transport.close()

    def _refuse(self, status: int, detail: str) -> None:
        """Answer ``status`` with a problem document and close, whatever the parser's state."""
        # Debug: the app never sees these requests (no span, no access line), and a flood of
        # them must not flood the logs.
        host, port = self.client or (None, None)
        log.debug(
            "request refused",
            extra={
                "http": {"response": {"status_code": status}},
                "client": {"address": host, "port": port},
            },
        )
        body = problem_body(status, detail)
        lines = [STATUS_LINE[status]]
        for name, value in self.server_state.default_headers:
            lines.append(name + b": " + value + b"\r\n")
        lines.append(
            b"content-type: %s\r\ncontent-length: %d\r\nconnection: close\r\n\r\n"
            % (PROBLEM_CONTENT_TYPE.encode(), len(body))
        )
        lines.append(body)
        self.transport.write(b"".join(lines))
        self.transport.close()


def guarded_protocol(limits: RequestLimits) -> type[GuardedHttpToolsProtocol]:
    """A ``GuardedHttpToolsProtocol`` with these limits, to give uvicorn as its ``http``."""
    return type("GuardedHttpToolsProtocol", (GuardedHttpToolsProtocol,), {"limits": limits})


def connection_cap(wanted: int) -> int:
    """``wanted``, lowered so that the cap answers 503 before the process runs out of files."""
    soft, _hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft == resource.RLIM_INFINITY:
        return wanted
    cap = max(1, min(wanted, soft - _FILES_KEPT_FOR_THE_PROCESS))
    if cap < wanted:
        log.warning(
            "connection cap lowered to stay below the file limit",
            extra={"wanted": wanted, "cap": cap, "file_limit": soft},
        )
    return cap


def uvicorn_limits(settings: Settings) -> dict[str, Any]:
    """The ``uvicorn.Config`` arguments that bound what one client can hold of a server."""
    limits = RequestLimits(settings.http_max_header_bytes, settings.http_request_timeout_seconds)
    return {
        "http": guarded_protocol(limits),
        # No route speaks WebSocket; an upgrade would leave the guarded protocol and its limits.
        "ws": "none",
        "timeout_keep_alive": settings.http_keepalive_seconds,
        "limit_concurrency": connection_cap(settings.http_max_connections),
        "server_header": False,
        "headers": SERVER_HEADERS,
    }


class BoundedUvicornWorker(UvicornWorker):  # type: ignore[misc]
    """gunicorn's uvicorn worker with ``uvicorn_limits`` (gunicorn's own ``limit_request_*``
    settings apply to its parser only, which this worker does not use)."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        # Read by UvicornWorker.__init__, after gunicorn's settings: these win.
        self.CONFIG_KWARGS = {**UvicornWorker.CONFIG_KWARGS, **uvicorn_limits(get_settings())}
        super().__init__(*args, **kwargs)
