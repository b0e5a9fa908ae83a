"""Structured logs: one JSON object per line on stdout, ready for Filebeat/ELK."""

from __future__ import annotations

import logging
import sys
from datetime import UTC, datetime
from typing import Any

import orjson

from functions.settings import Settings

__all__ = ["configure_logging"]

# Attributes every LogRecord has; anything else was passed with `extra=` and is logged as a field.
# uvicorn adds "color_message", a copy of the message with terminal colours.
_STANDARD_ATTRIBUTES = frozenset(vars(logging.makeLogRecord({}))) | {
    "message",
    "asctime",
    "color_message",
}


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        document: dict[str, Any] = {
            "@timestamp": datetime.fromtimestamp(record.created, UTC).isoformat(
                timespec="milliseconds"
            ),
            "log.level": record.levelname.lower(),
            "log.logger": record.name,
            "message": record.getMessage(),
        }
        for name, value in vars(record).items():
            if name not in _STANDARD_ATTRIBUTES:
                document[name] = value
        if record.exc_info:
            document["error.stack_trace"] = self.formatException(record.exc_info)
        return orjson.dumps(document, default=str).decode()


def configure_logging(settings: Settings) -> None:
    """Route every logger, uvicorn's included, through one JSON handler on stdout.

    Without ``LOG_ACCESS`` uvicorn's access logger is left without any handler, which is what
    makes uvicorn skip access logging altogether (not just drop the lines).
    """
    handler = logging.StreamHandler(sys.stdout)
    handler.setFormatter(JsonFormatter())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(settings.log_level)
    for name in ("uvicorn", "uvicorn.error", "uvicorn.access"):
        logging.getLogger(name).handlers[:] = []
        logging.getLogger(name).propagate = True
    logging.getLogger("uvicorn.access").propagate = settings.log_access
