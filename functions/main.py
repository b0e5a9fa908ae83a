"""The functions-framework entry points (``--source functions/main.py --target <name>``).

- ``ingest``: the HTTP API (ASGI): ``functions-framework --target ingest --asgi``.
- ``sink``: the KafkaSource CloudEvent trigger: ``functions-framework --target sink --asgi``.

The KEDA-style consumer loop is ``python -m functions.sink``; ``python -m functions.local`` hosts
the ingest function and that loop in one process for local runs.
"""

from __future__ import annotations

from collections.abc import Callable
from functools import lru_cache
from typing import TypeVar

import functions_framework.aio
from cloudevents.http.event import CloudEvent
from starlette.requests import Request
from starlette.responses import Response

from functions.ingest import IngestApi
from functions.logs import configure_logging
from functions.runtime import collect_cycles_rarely, get_producer, get_store
from functions.settings import Settings, get_settings
from functions.sink.cloudevent import CloudEventSink

# A request frees what it allocates, so 50,000 live new containers are seldom reached; at the
# default (700) one request's transient objects set the collector off (collect_cycles_rarely).
_GC_THRESHOLD = 50_000

Built = TypeVar("Built")


def _worker_resource(build: Callable[[Settings], Built]) -> Built:
    """``build(settings)`` once the worker's logging is set up; then the collector is tuned, so
    that what was built is frozen out of its scans."""
    settings = get_settings()
    configure_logging(settings)
    built = build(settings)
    collect_cycles_rarely(_GC_THRESHOLD)
    return built


# Built on the first call in each worker (after gunicorn forked it), which is also when the
# worker's logging becomes the JSON lines that the rest of the project writes.
@lru_cache(maxsize=1)
def _ingest_api() -> IngestApi:
    return _worker_resource(lambda settings: IngestApi(settings, get_producer, get_store))


@lru_cache(maxsize=1)
def _cloud_event_sink() -> CloudEventSink:
    return _worker_resource(lambda settings: CloudEventSink(settings, get_store))


@functions_framework.aio.http
async def ingest(request: Request) -> Response:
    return await _ingest_api().handle(request)


@functions_framework.aio.cloud_event
def sink(event: CloudEvent) -> None:
    # A plain function: functions-framework runs it in a worker thread, off the event loop,
    # which is where a blocking ClickHouse insert belongs.
    _cloud_event_sink().handle_event(event)
