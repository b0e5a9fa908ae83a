"""Structured logs: one Elastic Common Schema (ECS) JSON object per line on stdout.

stdout is the one log path: Filebeat ships it in the cluster, ``make observe`` locally. The
lines come from ``ecs-logging``'s formatter, so the field names and types are ECS's and an
index template from the ECS reference maps every line (``tests/test_logs.py`` checks them).
Fields passed with ``extra=`` must not reuse an ECS field-set name for something else (a string
``error`` where ECS has the ``error`` object makes Elasticsearch reject the line); exceptions go
through ``error_fields`` or ``exc_info``. Nothing secret is ever logged: no token, no body.
"""

from __future__ import annotations

import logging
import sys
from typing import Any
from urllib.parse import unquote, urlsplit

import ecs_logging

from functions.settings import Settings
from functions.telemetry import current_service_name, current_trace_ids

__all__ = ["EcsFormatter", "configure_logging", "error_fields", "url_fields"]

# uvicorn's access records: client address, method, path with query, HTTP version, status.
_ACCESS_LOGGER = "uvicorn.access"
_ACCESS_ARGUMENTS = 5


def error_fields(exc: BaseException) -> dict[str, Any]:
    """``extra=`` fields describing ``exc`` as ECS's ``error`` object, without a stack trace
    (for expected failures; ``log.exception`` adds the trace of unexpected ones)."""
    return {"error": {"type": type(exc).__name__, "message": str(exc)}}


def url_fields(url: str) -> dict[str, Any]:
    """``extra=`` fields naming ``url`` as ECS's ``url`` object, leaving out what may be a
    secret (user info, query string, fragment)."""
    parts = urlsplit(url)
    named = {"scheme": parts.scheme, "domain": parts.hostname, "port": parts.port}
    named["path"] = parts.path
    return {"url": {name: value for name, value in named.items() if value}}


class EcsFormatter(ecs_logging.StdlibFormatter):
    """ecs-logging's formatter, plus the current OpenTelemetry span's ``trace.id``,
    ``span.id`` and ``service.name`` (``service`` outside a span), and uvicorn's access records
    as ECS ``http``/``url`` fields."""

    def __init__(self, service: str) -> None:
        # log.original repeats message; color_message is uvicorn's copy with terminal colours.
        super().__init__(
            exclude_fields=["log.original", "color_message"], extra={"service.name": service}
        )

    def format_to_ecs(self, record: logging.LogRecord) -> dict[str, Any]:
        document: dict[str, Any] = super().format_to_ecs(record)
        ids = current_trace_ids()
        if ids is not None:
            document["trace"], document["span"] = {"id": ids[0]}, {"id": ids[1]}
            document["service"]["name"] = current_service_name() or document["service"]["name"]
        if record.name == _ACCESS_LOGGER and len(record.args or ()) == _ACCESS_ARGUMENTS:
            _add_access_fields(document, record.args)  # type: ignore[arg-type]
        return document


def _add_access_fields(document: dict[str, Any], arguments: tuple[Any, ...]) -> None:
    client, method, path_with_query, http_version, status = arguments
    path, _, query = str(path_with_query).partition("?")
    document["http"] = {
        "version": str(http_version),
        "request": {"method": str(method)},
        "response": {"status_code": int(status)},
    }
    document["url"] = {"path": unquote(path), **({"query": query} if query else {})}
    if client:  # "host:port"
        address, _, port = str(client).rpartition(":")
        document["client"] = {"address": address, "port": int(port)}


def configure_logging(settings: Settings, service: str) -> None:
    """Route every logger, uvicorn's included, through one ECS JSON handler on stdout, as the
    service named ``service``.

    Without ``LOG_ACCESS`` uvicorn's access logger is left without any handler, which is what
    makes uvicorn skip access logging altogether (not just drop the lines).
    """
    handler = logging.StreamHandler(sys.stdout)
    handler.setFormatter(EcsFormatter(service))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(settings.log_level)
    for name in ("uvicorn", "uvicorn.error", _ACCESS_LOGGER):
        logging.getLogger(name).handlers[:] = []
        logging.getLogger(name).propagate = True
    logging.getLogger(_ACCESS_LOGGER).propagate = settings.log_access
