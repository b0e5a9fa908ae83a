"""The stack this project replaces, as a faithful minimal stand-in: FastAPI + uvicorn, aiokafka.

The seed service was a FastAPI app that answered each view event after ``await
producer.send_and_wait(...)`` on a pure-Python aiokafka producer. This stand-in keeps exactly that
request path and gives it the same contract as ours, so that the benchmark compares the stacks and
not the amount of work: the same token rules and permission check (verified with PyJWT on every
request, as the seed did; ours remembers verified tokens), the same body model (``ViewEventIn``
with the deployment's bounds, strict JSON validation in a FastAPI dependency, because FastAPI's own
body parameters validate decoded objects, where a strict model refuses a UUID string), the same
Kafka record (``ViewRecord``, keyed by user), the same broker and the same durability
(``acks=all``, idempotent producer, ``linger.ms`` from the settings). Errors are FastAPI's own, not
problem documents: the benchmark sends only valid requests.

Run: ``uvicorn loadtest.baseline.app:app`` with the ingest function's environment variables.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from datetime import UTC, datetime, timedelta
from typing import Annotated
from uuid import UUID

import jwt
from aiokafka import AIOKafkaProducer
from aiokafka.errors import KafkaError
from fastapi import Depends, FastAPI, Header, HTTPException, Request
from fastapi.exceptions import RequestValidationError
from pydantic import ValidationError

from functions.auth import Principal
from functions.errors import Forbidden
from functions.events import EventTimeWindow, ViewEventIn, ViewRecord, request_models
from functions.settings import get_settings

settings = get_settings()
verification_key = settings.jwt_verification_key()
view_model = request_models(settings.max_movie_time_offset_ms, settings.max_batch_events).view
max_skew = timedelta(seconds=settings.max_event_time_skew_seconds)
max_age = timedelta(seconds=settings.max_event_age_seconds)
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


async def principal(authorization: Annotated[str | None, Header()] = None) -> Principal:
    scheme, _, token = (authorization or "").partition(" ")
    if scheme.lower() != "bearer" or not token:
        raise HTTPException(401, "missing bearer token")
    try:
        claims = jwt.decode(
            token,
            verification_key,
            algorithms=[settings.jwt_algorithm],
            leeway=settings.jwt_leeway_seconds,
            issuer=settings.jwt_issuer,
            audience=settings.jwt_audience,
            options={"require": ["exp", "sub"]},
        )
        user_id = UUID(claims["sub"])
    except (jwt.InvalidTokenError, ValueError) as exc:
        raise HTTPException(401, f"invalid token: {exc}") from exc
    permissions = claims.get(settings.jwt_permissions_claim, [])
    if settings.jwt_write_permission not in permissions:
        raise HTTPException(403, "the token lacks the write permission")
    return Principal(user_id, frozenset(permissions))


async def view_event(request: Request) -> ViewEventIn:
    window = EventTimeWindow(datetime.now(UTC), max_skew, max_age)
    try:
        return view_model.model_validate_json(await request.body(), context=window)
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
    try:
        user_id = viewer.viewer(event.user_id)
    except Forbidden as exc:
        raise HTTPException(403, str(exc)) from exc
    record = ViewRecord.from_request(
        user_id=user_id,
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
