"""The HTTP API: accept view events into Kafka, read positions and rankings from ClickHouse.

``IngestApi.handle`` takes a Starlette request and returns a response; ``functions/main.py``
registers it as a functions-framework ASGI function. Kafka and ClickHouse are reached through
factories called on first use, so nothing with threads or sockets exists before a worker forks.
"""

from __future__ import annotations

import asyncio
import logging
import re
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from functools import cached_property
from typing import Any
from uuid import UUID

import orjson
from pydantic import ValidationError
from starlette.requests import Request
from starlette.responses import Response

from functions.auth import Principal, TokenVerifier
from functions.errors import AuthError, DeliveryFailed, StoreUnavailable
from functions.events import SeedViewIn, ViewEventIn, ViewRecord
from functions.problems import field_errors, problem_response
from functions.producer import AsyncProducer
from functions.settings import Settings
from functions.store import ViewStore

__all__ = ["IngestApi"]

log = logging.getLogger(__name__)

Handler = Callable[[Request, dict[str, str]], Awaitable[Response]]
_PATH_SEGMENT = r"[^/]+"


def _json(content: Any, status: int) -> Response:
    return Response(orjson.dumps(content), status_code=status, media_type="application/json")


class IngestApi:
    """Routes, authentication and the HTTP contract of the ingest function."""

    def __init__(
        self,
        settings: Settings,
        producer_factory: Callable[[], AsyncProducer],
        store_factory: Callable[[], ViewStore],
    ) -> None:
        self._settings = settings
        self._producer_factory = producer_factory
        self._store_factory = store_factory
        self._routes: list[tuple[str, re.Pattern[str], Handler]] = [
            ("GET", re.compile(r"/healthz"), self._healthz),
            ("POST", re.compile(r"/v1/views"), self._post_view),
            ("POST", re.compile(r"/bigdata-api/v1/producer/views"), self._post_seed_view),
            (
                "GET",
                re.compile(rf"/v1/views/(?P<movie_id>{_PATH_SEGMENT})/position"),
                self._get_position,
            ),
            ("GET", re.compile(r"/v1/movies/most-watched"), self._get_most_watched),
        ]

    @cached_property
    def _verifier(self) -> TokenVerifier:
        return TokenVerifier.from_settings(self._settings)

    @cached_property
    def _producer(self) -> AsyncProducer:
        return self._producer_factory()

    async def _store(self) -> ViewStore:
        # The first call connects (blocking); later calls return the cached store.
        return await asyncio.to_thread(self._store_factory)

    async def handle(self, request: Request) -> Response:
        """Answer one request; every error is a problem document, never a bare 500."""
        path = request.url.path.rstrip("/") or "/"
        allowed = []
        for method, pattern, handler in self._routes:
            match = pattern.fullmatch(path)
            if match is None:
                continue
            if method != request.method:
                allowed.append(method)
                continue
            try:
                return await handler(request, match.groupdict())
            except AuthError as exc:
                return problem_response(
                    401,
                    str(exc),
                    headers={"WWW-Authenticate": 'Bearer error="invalid_token"'},
                )
            except DeliveryFailed as exc:
                log.warning("kafka did not acknowledge: %s", exc)
                return self._unavailable("the event was not acknowledged by Kafka")
            except StoreUnavailable as exc:
                log.warning("clickhouse unavailable: %s", exc)
                return self._unavailable("the view store is unavailable")
            except Exception:
                log.exception("unhandled error on %s %s", request.method, path)
                return problem_response(500, "internal error")
        if allowed:
            return problem_response(
                405, f"{request.method} is not allowed here", headers={"Allow": ", ".join(allowed)}
            )
        return problem_response(404, f"no route for {path}")

    def _unavailable(self, detail: str) -> Response:
        return problem_response(
            503, detail, headers={"Retry-After": str(self._settings.retry_after_seconds)}
        )

    def _authenticate(self, request: Request) -> Principal:
        return self._verifier.verify(request.headers.get("authorization"))

    async def _healthz(self, request: Request, params: dict[str, str]) -> Response:
        return _json({"status": "ok"}, 200)

    async def _post_view(self, request: Request, params: dict[str, str]) -> Response:
        principal = self._authenticate(request)
        try:
            event = ViewEventIn.model_validate_json(await request.body())
        except ValidationError as exc:
            return _invalid_body(exc)
        if event.user_id is not None and event.user_id != principal.user_id:
            return problem_response(403, "user_id is not the token's subject")
        record = ViewRecord.from_request(
            user_id=principal.user_id,
            movie_id=event.movie_id,
            movie_time_offset=event.movie_time_offset,
            received_at=datetime.now(UTC),
            event_time=event.event_time,
            event_id=event.event_id,
        )
        await self._produce(record)
        return _json({"event_id": str(record.event_id), "status": "accepted"}, 202)

    async def _post_seed_view(self, request: Request, params: dict[str, str]) -> Response:
        principal = self._authenticate(request)
        try:
            event = SeedViewIn.model_validate_json(await request.body())
        except ValidationError as exc:
            return _invalid_body(exc)
        if event.user_id != principal.user_id:
            return problem_response(403, "user_id is not the token's subject")
        record = ViewRecord.from_request(
            user_id=principal.user_id,
            movie_id=event.movie_id,
            movie_time_offset=event.movie_time_offset,
            received_at=datetime.now(UTC),
        )
        await self._produce(record)
        return _json({"message": "acknowledged", "status": "success"}, 201)

    async def _produce(self, record: ViewRecord) -> None:
        key, value = record.to_kafka()
        await self._producer.send(self._settings.views_topic, key, value)

    async def _get_position(self, request: Request, params: dict[str, str]) -> Response:
        principal = self._authenticate(request)
        try:
            movie_id = UUID(params["movie_id"])
        except ValueError:
            return problem_response(
                422,
                "movie_id is not a UUID",
                errors=[{"pointer": "#/path/movie_id", "detail": "must be a UUID"}],
            )
        store = await self._store()
        position = await asyncio.to_thread(store.latest_position, principal.user_id, movie_id)
        if position is None:
            return problem_response(404, "no view of this movie by this viewer")
        return _json(
            {
                "movie_id": str(position.movie_id),
                "movie_time_offset": position.movie_time_offset,
                "event_time": _rfc3339(position.event_time),
            },
            200,
        )

    async def _get_most_watched(self, request: Request, params: dict[str, str]) -> Response:
        self._authenticate(request)
        raw_limit = request.query_params.get("limit", "10")
        if not raw_limit.isdigit() or not 1 <= int(raw_limit) <= 1000:
            return problem_response(
                422,
                "limit must be an integer from 1 to 1000",
                errors=[{"pointer": "#/query/limit", "detail": "must be 1..1000"}],
            )
        store = await self._store()
        ranking = await asyncio.to_thread(store.most_watched, int(raw_limit))
        return _json(
            {
                "movies": [
                    {"movie_id": str(row.movie_id), "viewers": row.viewers, "events": row.events}
                    for row in ranking
                ]
            },
            200,
        )


def _invalid_body(exc: ValidationError) -> Response:
    if any(error["type"] == "json_invalid" for error in exc.errors()):
        return problem_response(400, "the body is not valid JSON")
    return problem_response(
        422, "the body does not match the event schema", errors=field_errors(exc)
    )


def _rfc3339(moment: datetime) -> str:
    if moment.tzinfo is None:  # ClickHouse DateTime64(3, 'UTC') may come back naive
        moment = moment.replace(tzinfo=UTC)
    return moment.astimezone(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")
