"""The functions-framework entry points (``--source functions/main.py --target <name>``).

- ``ingest``: the HTTP API (ASGI): ``functions-framework --target ingest --asgi``.
- ``sink``: the KafkaSource CloudEvent trigger (an HTTP function that parses the CloudEvent):
  ``functions-framework --target sink --asgi``.

The KEDA-style consumer loop is ``python -m functions.sink``; ``python -m functions.local`` hosts
the ingest function and that loop in one process for local runs.
"""

from __future__ import annotations

from functools import lru_cache

import functions_framework.aio
from starlette.requests import Request
from starlette.responses import Response

from functions.bootstrap import REQUEST_GC_THRESHOLD, start
from functions.http.app import IngestApi
from functions.runtime import get_producer, get_store
from functions.sink.triggers.cloudevent import CloudEventSink


# Built on the first call in each worker (after gunicorn forked it), which is also when the
# worker's logging becomes the JSON lines that the rest of the project writes.
@lru_cache(maxsize=1)
def _ingest_api() -> IngestApi:
    return start(
        lambda settings: IngestApi(settings, get_producer, get_store), REQUEST_GC_THRESHOLD
    )


@lru_cache(maxsize=1)
def _cloud_event_sink() -> CloudEventSink:
    return start(lambda settings: CloudEventSink(settings, get_store), REQUEST_GC_THRESHOLD)


@functions_framework.aio.http
async def ingest(request: Request) -> Response:
    return await _ingest_api().handle(request)


# An HTTP function that reads the CloudEvent itself: a ``cloud_event`` one would not see the
# request's ``traceparent`` header (functions/sink/triggers/cloudevent.py).
@functions_framework.aio.http
async def sink(request: Request) -> Response:
    return await _cloud_event_sink().handle_request(request)
