"""The functions-framework entry points (``--source functions/main.py --target <name>``).

- ``ingest``: the HTTP API (ASGI): ``functions-framework --target ingest --asgi``.
- ``sink``: the KafkaSource CloudEvent trigger: ``functions-framework --target sink --asgi``;
  it also answers ``GET /readyz``.

The KEDA-style consumer loop is ``python -m functions.sink``; ``python -m functions.local`` hosts
the ingest function and that loop in one process for local runs.
"""

from __future__ import annotations

import asyncio
from functools import lru_cache

import functions_framework.aio
from cloudevents.exceptions import GenericException
from cloudevents.http import from_http
from starlette.requests import Request
from starlette.responses import Response

from functions.bootstrap import REQUEST_GC_THRESHOLD, start
from functions.http.app import IngestApi
from functions.problems import problem_response
from functions.readiness import CHECK_TIMEOUT_SECONDS, Readiness
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


@lru_cache(maxsize=1)
def _sink_readiness() -> Readiness:
    # The sink stores into ClickHouse; reading Kafka is KafkaSource's side.
    return Readiness({"clickhouse": lambda: get_store().answers(CHECK_TIMEOUT_SECONDS)})


# An HTTP function rather than ``aio.cloud_event``: functions-framework routes only POST to a
# CloudEvent function, and the sink must answer GET /readyz on its own server too. The event is
# parsed as functions-framework's CloudEvent wrapper does, with the CloudEvents SDK.
@functions_framework.aio.http
async def sink(request: Request) -> Response:
    handler = _cloud_event_sink()
    if request.method == "GET" and request.url.path.rstrip("/") == "/readyz":
        return await _sink_readiness().response()
    try:
        event = from_http(request.headers, await request.body())
    except GenericException as exc:
        return problem_response(400, f"not a CloudEvent: {exc}")
    # Off the event loop, which is where a blocking ClickHouse insert belongs; a problem for
    # KafkaSource is raised as Starlette's HTTPException and rendered by the framework's app.
    await asyncio.to_thread(handler.handle_event, event)
    return Response("OK")
