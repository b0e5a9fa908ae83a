"""The functions-framework entry points (``--source functions/main.py --target <name>``).

- ``ingest``: the HTTP API (ASGI): ``functions-framework --target ingest --asgi``.
- ``sink``: the KafkaSource CloudEvent trigger: ``functions-framework --target sink --asgi``.
- ``sink_connector``: the OpenFaaS Pro kafka-connector trigger (one record per HTTP call).

Both sink targets are HTTP functions so that they answer the platform's probes on GET
(``/healthz``: the process; ``/readyz``: ClickHouse answers); functions-framework serves a
CloudEvent function on POST only.

The KEDA-style consumer loop is ``python -m functions.sink``; ``python -m functions.local`` hosts
the ingest function and that loop in one process for local runs.
"""

from __future__ import annotations

from functools import lru_cache

import functions_framework.aio
from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import Response

from functions.bootstrap import REQUEST_GC_THRESHOLD, start
from functions.http.app import IngestApi
from functions.readiness import CHECK_TIMEOUT_SECONDS, Readiness
from functions.runtime import get_producer, get_store
from functions.settings import get_settings
from functions.sink.dlq import DeadLetterPublisher
from functions.sink.triggers.cloudevent import CloudEventSink
from functions.sink.triggers.health import serving_probe_answer
from functions.sink.triggers.openfaas import ConnectorSink

# Read when functions-framework imports this module (in the gunicorn master, before it forks):
# a pod with a missing or wrong setting exits at start with one line, not at its first request.
get_settings()


# Built on the first call in each worker (after gunicorn forked it), which is also when the
# worker's logging becomes the JSON lines that the rest of the project writes.
@lru_cache(maxsize=1)
def _ingest_api() -> IngestApi:
    return start(
        lambda settings: IngestApi(settings, get_producer, get_store),
        "ingest",
        REQUEST_GC_THRESHOLD,
    )


@lru_cache(maxsize=1)
def _cloud_event_sink() -> CloudEventSink:
    return start(lambda settings: CloudEventSink(settings, get_store), "sink", REQUEST_GC_THRESHOLD)


@lru_cache(maxsize=1)
def _connector_sink() -> ConnectorSink:
    return start(
        lambda settings: ConnectorSink(settings, get_store, DeadLetterPublisher(settings)),
        "sink",
        REQUEST_GC_THRESHOLD,
    )


@functions_framework.aio.http
async def ingest(request: Request) -> Response:
    return await _ingest_api().handle(request)


@lru_cache(maxsize=1)
def _sink_readiness() -> Readiness:
    # The sink triggers store into ClickHouse; reading Kafka is the platform's side.
    return Readiness({"clickhouse": lambda: get_store().answers(CHECK_TIMEOUT_SECONDS)})


async def _probe(request: Request) -> Response:
    path = request.scope["path"].rstrip("/")
    if path == "/readyz":
        return await _sink_readiness().response()
    status, body, content_type = serving_probe_answer(path)
    return Response(body, status_code=status, media_type=content_type)


@functions_framework.aio.http
async def sink(request: Request) -> Response:
    handler = _cloud_event_sink()  # first: its start-up sets the logs up before a probe logs
    if request.method == "GET":
        return await _probe(request)
    # The function reads the CloudEvent itself, so that it sees the request's ``traceparent``
    # header too (functions/sink/triggers/cloudevent.py); problems (4xx, 5xx) are raised as
    # HTTPException and answered by Starlette.
    return await handler.handle_request(request)


@functions_framework.aio.http
async def sink_connector(request: Request) -> Response:
    handler = _connector_sink()  # first: its start-up sets the logs up before a probe logs
    if request.method == "GET":
        return await _probe(request)
    body = await request.body()
    # The insert and the dead-letter acknowledgement block: off the event loop.
    return await run_in_threadpool(handler.handle, request.headers, body)
