"""The stack this project replaces, as a faithful minimal stand-in: FastAPI + uvicorn, aiokafka.

The seed service was a FastAPI app that answered each view event after ``await
producer.send_and_wait(...)`` on a pure-Python aiokafka producer. This stand-in keeps exactly
that request path and gives it the same contract as ours, so that the benchmark compares the
stacks and not the amount of work: the same bearer-token verification (``TokenVerifier``), the
same body model (``ViewEventIn``, strict JSON validation in a FastAPI dependency, because
FastAPI's own body parameters validate decoded objects, where a strict model refuses a UUID
string), the same Kafka record (``ViewRecord``, keyed by user), the same broker and the same
durability (``acks=all``, idempotent producer, ``linger.ms`` from the settings). Errors are
FastAPI's own, not problem documents: the benchmark sends only valid requests.

Run: ``uvicorn loadtest.baseline.app:app`` with the ingest function's environment variables.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from datetime import UTC, datetime
from typing import Annotated

from aiokafka import AIOKafkaProducer
from aiokafka.errors import KafkaError
from fastapi import Depends, FastAPI, Header, HTTPException, Request
from fastapi.exceptions import RequestValidationError
from pydantic import ValidationError

from functions.auth import Principal, TokenVerifier
from functions.errors import AuthError
from functions.events import ViewEventIn, ViewRecord
from functions.settings import get_settings

settings = get_settings()
verifier = TokenVerifier.from_settings(settings)
producer: AIOKafkaProducer | None = None


@asynccontextmanager
async def lifespan(_app: FastAPI) -> AsyncIterator[None]:
    global producer
    producer = AIOKafkaProducer(
        bootstrap_servers=settings.kafka_bootstrap_servers,
        acks="all",
        enable_idempotence=True,
        request_timeout_ms=settings.kafka_delivery_timeout_ms,
        linger_ms=settings.kafka_linger_ms,
    )
    await producer.start()
    try:
        yield
    finally:
        await producer.stop()


app = FastAPI(lifespan=lifespan)


def principal(authorization: Annotated[str | None, Header()] = None) -> Principal:
    try:
        return verifier.verify(authorization)
    except AuthError as exc:
        raise HTTPException(401, str(exc)) from exc


async def view_event(request: Request) -> ViewEventIn:
    try:
        return ViewEventIn.model_validate_json(await request.body())
    except ValidationError as exc:
        raise RequestValidationError(exc.errors()) from exc


@app.get("/healthz")
async def healthz() -> dict[str, str]:
    return {"status": "ok"}


@app.post("/v1/views", status_code=202)
async def post_view(
    event: Annotated[ViewEventIn, Depends(view_event)],
    viewer: Annotated[Principal, Depends(principal)],
) -> dict[str, str]:
    if event.user_id is not None and event.user_id != viewer.user_id:
        raise HTTPException(403, "user_id is not the token's subject")
    record = ViewRecord.from_request(
        user_id=viewer.user_id,
        movie_id=event.movie_id,
        movie_time_offset=event.movie_time_offset,
        received_at=datetime.now(UTC),
        event_time=event.event_time,
        event_id=event.event_id,
    )
    key, value = record.to_kafka()
    assert producer is not None
    try:
        await producer.send_and_wait(settings.views_topic, value=value, key=key)
    except KafkaError as exc:
        raise HTTPException(503, "the event was not acknowledged by Kafka") from exc
    return {"event_id": str(record.event_id), "status": "accepted"}
