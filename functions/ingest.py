"""The HTTP API: accept view events into Kafka, read positions and rankings from ClickHouse.

``IngestApi.handle`` takes a Starlette request and returns a response; ``functions/main.py``
registers it as a functions-framework ASGI function. ``IngestApi.routes`` is the one route
table: the dispatcher authorizes and reads bodies from it, and the OpenAPI document is generated
from it. Kafka and ClickHouse are reached through factories called on first use, so nothing with
threads or sockets exists before a worker forks.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from functools import cached_property
from typing import Any, ClassVar, TypeVar

import orjson
from pydantic import BaseModel, ValidationError
from pydantic_core import ErrorDetails, from_json, to_json
from starlette.requests import ClientDisconnect, Request
from starlette.responses import Response

from functions.api_models import (
    BatchOutcome,
    Health,
    MostWatched,
    MostWatchedQuery,
    PositionOut,
    PositionPath,
    SeedAccepted,
    ViewAccepted,
)
from functions.auth import Principal, authenticator_from_settings
from functions.errors import (
    AuthError,
    AuthUnavailable,
    DeliveryFailed,
    Forbidden,
    InvalidRequest,
    MissingToken,
    StoreUnavailable,
)
from functions.events import EventTimeWindow, ViewEventIn, ViewRecord, request_models
from functions.openapi import DOCS_PAGE, Body, Operation, openapi_document, path_pattern
from functions.problems import field_errors, problem_document, problem_response
from functions.producer import AsyncProducer
from functions.settings import Settings
from functions.store import ViewStore

__all__ = ["IngestApi", "Route", "read_json_body"]

log = logging.getLogger(__name__)

Model = TypeVar("Model", bound=BaseModel)

# Only this page's own inline script and style may run, and it may only fetch from this origin.
_DOCS_POLICY = (
    "default-src 'none'; script-src 'unsafe-inline'; style-src 'unsafe-inline'; connect-src 'self'"
)


# A 64 KiB body of unknown fields would otherwise get a problem document several times its size.
_MAX_LISTED_ERRORS = 100


def _json(content: Any, status: int) -> Response:
    # orjson writes UUIDs (lower-case 8-4-4-4-12) itself: no UUID.__str__ in Python.
    return Response(orjson.dumps(content), status_code=status, media_type="application/json")


@dataclass(frozen=True, slots=True)
class Incoming:
    """A request that passed its route's authorization, with its body read within the limit."""

    request: Request
    params: dict[str, str]
    body: bytes
    authorized: Principal | None

    @property
    def principal(self) -> Principal:
        if self.authorized is None:
            raise TypeError("this route has no permission, hence no principal")
        return self.authorized


@dataclass(frozen=True, slots=True)
class Route:
    method: str
    path: str  # an OpenAPI path template
    handler: Callable[[IngestApi, Incoming], Awaitable[Response]]
    operation: Operation


async def read_json_body(request: Request, max_bytes: int) -> bytes:
    """The body of a JSON request, refused (415, 413) before anything of it is parsed."""
    media_type, _, parameters = request.headers.get("content-type", "").partition(";")
    charset = parameters.strip().lower().removeprefix("charset=").strip('"')
    if media_type.strip().lower() != "application/json" or charset not in ("", "utf-8", "utf8"):
        raise InvalidRequest(415, "the body must be application/json in UTF-8")
    declared = request.headers.get("content-length", "")
    if declared.isdigit() and int(declared) > max_bytes:
        raise InvalidRequest(413, f"the body is over the {max_bytes}-byte limit")
    # The ASGI messages themselves, not Request.stream(): its async generator was about a
    # third of this function's time in a micro-benchmark, for a body that is nearly always one
    # message.
    body = bytearray()
    while True:
        message = await request.receive()
        if message["type"] == "http.disconnect":
            raise ClientDisconnect()
        body += message.get("body", b"")
        if len(body) > max_bytes:  # a missing or lying Content-Length is caught here
            raise InvalidRequest(413, f"the body is over the {max_bytes}-byte limit")
        if not message.get("more_body", False):
            return bytes(body)


def _invalid_body(errors: list[ErrorDetails]) -> InvalidRequest:
    if any(error["type"] == "json_invalid" for error in errors):
        return InvalidRequest(400, f"the body is not valid JSON: {errors[0]['msg']}")
    detail = "the body does not match the schema"
    if len(errors) > _MAX_LISTED_ERRORS:
        detail += f" ({len(errors)} errors, the first {_MAX_LISTED_ERRORS} listed)"
    return InvalidRequest(422, detail, errors=field_errors(errors[:_MAX_LISTED_ERRORS]))


def _rejected(
    status: int, detail: str, errors: list[dict[str, str]] | None = None
) -> dict[str, Any]:
    return {"status": "rejected", "problem": problem_document(status, detail, errors=errors)}


def _errors(exc: ValidationError) -> list[ErrorDetails]:
    return exc.errors(include_url=False, include_input=False)


def _parameters(model: type[Model], values: dict[str, str], location: str) -> Model:
    try:
        return model.model_validate_strings(values)
    except ValidationError as exc:
        raise InvalidRequest(
            422,
            f"invalid {location} parameters",
            errors=field_errors(_errors(exc), f"#/{location}"),
        ) from exc


class IngestApi:
    """Routes, authentication and the HTTP contract of the ingest function."""

    routes: ClassVar[tuple[Route, ...]]

    def __init__(
        self,
        settings: Settings,
        producer_factory: Callable[[], AsyncProducer],
        store_factory: Callable[[], ViewStore],
    ) -> None:
        self._settings = settings
        self._producer_factory = producer_factory
        self._store_factory = store_factory
        self._authenticator = authenticator_from_settings(settings)
        self._permissions = {
            "write": settings.jwt_write_permission,
            "read": settings.jwt_read_permission,
        }
        self._models = request_models(settings.max_movie_time_offset_ms, settings.max_batch_events)
        self._max_skew = timedelta(seconds=settings.max_event_time_skew_seconds)
        self._max_age = timedelta(seconds=settings.max_event_age_seconds)
        self._dispatch = [(route, path_pattern(route.path)) for route in self.routes]

    @cached_property
    def _producer(self) -> AsyncProducer:
        return self._producer_factory()

    @cached_property
    def openapi(self) -> bytes:
        return orjson.dumps(openapi_document(self.routes, self._settings))

    async def _store(self) -> ViewStore:
        # The first call connects (blocking); later calls return the cached store.
        return await asyncio.to_thread(self._store_factory)

    async def handle(self, request: Request) -> Response:
        """Answer one request; every error is a problem document, never a bare 500."""
        path = request.scope["path"].rstrip("/") or "/"  # request.url would build a whole URL
        allowed = []
        for route, pattern in self._dispatch:
            match = pattern.fullmatch(path)
            if match is None:
                continue
            if route.method != request.method:
                allowed.append(route.method)
                continue
            try:
                incoming = await self._admit(route.operation, request, match.groupdict())
                return await route.handler(self, incoming)
            except MissingToken as exc:
                return problem_response(401, str(exc), headers={"WWW-Authenticate": "Bearer"})
            except AuthError as exc:
                return problem_response(
                    401, str(exc), headers={"WWW-Authenticate": 'Bearer error="invalid_token"'}
                )
            except Forbidden as exc:
                headers = None
                if exc.missing_permission is not None:
                    challenge = (
                        f'Bearer error="insufficient_scope", scope="{exc.missing_permission}"'
                    )
                    headers = {"WWW-Authenticate": challenge}
                return problem_response(403, str(exc), headers=headers)
            except InvalidRequest as exc:
                return problem_response(exc.status, str(exc), errors=exc.errors)
            except AuthUnavailable as exc:
                log.warning("signing keys unavailable: %s", exc)
                return self._unavailable("the token signing keys are unavailable")
            except DeliveryFailed as exc:
                log.warning("kafka did not acknowledge: %s", exc)
                return self._unavailable("the event was not acknowledged by Kafka")
            except StoreUnavailable as exc:
                log.warning("clickhouse unavailable: %s", exc)
                return self._unavailable("the view store is unavailable")
            except Exception:
                log.exception("unhandled error on %s %s", request.method, route.path)
                return problem_response(500, "internal error")
        if allowed:
            return problem_response(
                405, f"{request.method} is not allowed here", headers={"Allow": ", ".join(allowed)}
            )
        return problem_response(404, f"no route for {path}")

    async def _admit(
        self, operation: Operation, request: Request, params: dict[str, str]
    ) -> Incoming:
        # Order: who (401), may they (403), then the body (415, 413) — nothing is read for a
        # caller who may not write.
        principal = None
        if operation.permission is not None:
            principal = await self._authenticator.authenticate(request.headers.get("authorization"))
            principal.require(self._permissions[operation.permission])
        body = b""
        if operation.body is not None:
            body = await read_json_body(request, operation.body.max_bytes(self._settings))
        return Incoming(request, params, body, principal)

    def _unavailable(self, detail: str) -> Response:
        return problem_response(
            503, detail, headers={"Retry-After": str(self._settings.retry_after_seconds)}
        )

    def _window(self, received_at: datetime) -> EventTimeWindow:
        return EventTimeWindow(received_at, self._max_skew, self._max_age)

    async def _produce(self, record: ViewRecord) -> None:
        key, value = record.to_kafka()
        await self._producer.send(self._settings.views_topic, key, value)

    # --- handlers ----------------------------------------------------------------------------

    async def _healthz(self, incoming: Incoming) -> Response:
        return _json({"status": "ok"}, 200)

    async def _openapi_json(self, incoming: Incoming) -> Response:
        return Response(self.openapi, media_type="application/json")

    async def _docs(self, incoming: Incoming) -> Response:
        return Response(
            DOCS_PAGE, media_type="text/html", headers={"Content-Security-Policy": _DOCS_POLICY}
        )

    async def _post_view(self, incoming: Incoming) -> Response:
        received_at = datetime.now(UTC)
        try:
            event = self._models.view.model_validate_json(
                incoming.body, context=self._window(received_at)
            )
        except ValidationError as exc:
            raise _invalid_body(_errors(exc)) from exc
        record = self._record(incoming.principal, event, received_at)
        await self._produce(record)
        return _json({"event_id": record.event_id, "status": "accepted"}, 202)

    def _record(
        self, principal: Principal, event: ViewEventIn, received_at: datetime
    ) -> ViewRecord:
        return ViewRecord.from_request(
            user_id=principal.viewer(event.user_id),
            movie_id=event.movie_id,
            movie_time_offset=event.movie_time_offset,
            received_at=received_at,
            event_time=event.event_time,
            event_id=event.event_id,
        )

    async def _post_view_batch(self, incoming: Incoming) -> Response:
        received_at = datetime.now(UTC)
        items: list[dict[str, Any]] = []
        records: list[tuple[int, ViewRecord]] = []  # (position in items, record)
        for event in self._batch_events(incoming.body, self._window(received_at)):
            if isinstance(event, InvalidRequest):
                items.append(_rejected(event.status, str(event), event.errors))
                continue
            try:
                record = self._record(incoming.principal, event, received_at)
            except Forbidden as exc:
                items.append(_rejected(403, str(exc)))
                continue
            records.append((len(items), record))
            items.append({"status": "accepted", "event_id": record.event_id})
        outcomes = await asyncio.gather(
            *(self._produce(record) for _, record in records), return_exceptions=True
        )
        retry = False
        for (index, _), outcome in zip(records, outcomes, strict=True):
            if isinstance(outcome, DeliveryFailed):
                log.warning("kafka did not acknowledge a batch event: %s", outcome)
                retry = True
                items[index] = _rejected(503, "the event was not acknowledged by Kafka")
            elif isinstance(outcome, BaseException):
                raise outcome
        accepted = sum(item["status"] == "accepted" for item in items)
        response = _json(
            {"accepted": accepted, "rejected": len(items) - accepted, "items": items},
            202 if accepted == len(items) else 207,
        )
        if retry:
            response.headers["Retry-After"] = str(self._settings.retry_after_seconds)
        return response

    def _batch_events(
        self, body: bytes, window: EventTimeWindow
    ) -> list[ViewEventIn | InvalidRequest]:
        """Each event of a batch, or what is wrong with it; ``InvalidRequest`` for the whole."""
        try:
            return list(self._models.batch.model_validate_json(body, context=window).events)
        except ValidationError as exc:
            errors = _errors(exc)
        by_item: dict[int, list[ErrorDetails]] = {}
        for error in errors:
            location = error["loc"]
            if len(location) < 2 or location[0] != "events" or not isinstance(location[1], int):
                raise _invalid_body(errors)  # the envelope itself is wrong
            by_item.setdefault(location[1], []).append(error)
        # Some events are wrong: judge the others alone (one pass sufficed for a clean batch).
        events: list[ViewEventIn | InvalidRequest] = []
        for index, item in enumerate(from_json(body)["events"]):
            if index in by_item:
                events.append(_invalid_body(by_item[index]))
            else:
                events.append(self._models.view.model_validate_json(to_json(item), context=window))
        return events

    async def _post_seed_view(self, incoming: Incoming) -> Response:
        received_at = datetime.now(UTC)
        try:
            event = self._models.seed.model_validate_json(incoming.body)
        except ValidationError as exc:
            raise _invalid_body(_errors(exc)) from exc
        record = ViewRecord.from_request(
            user_id=incoming.principal.viewer(event.user_id),
            movie_id=event.movie_id,
            movie_time_offset=event.movie_time_offset,
            received_at=received_at,
        )
        await self._produce(record)
        return _json({"message": "acknowledged", "status": "success"}, 201)

    async def _get_position(self, incoming: Incoming) -> Response:
        viewer = incoming.principal.viewer(None)
        movie_id = _parameters(PositionPath, incoming.params, "path").movie_id
        store = await self._store()
        position = await asyncio.to_thread(store.latest_position, viewer, movie_id)
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

    async def _get_most_watched(self, incoming: Incoming) -> Response:
        query = dict(incoming.request.query_params)
        limit = _parameters(MostWatchedQuery, query, "query").limit
        store = await self._store()
        ranking = await asyncio.to_thread(store.most_watched, limit)
        return _json(
            {
                "movies": [
                    {"movie_id": str(row.movie_id), "viewers": row.viewers, "events": row.events}
                    for row in ranking
                ]
            },
            200,
        )


_VIEW_BODY = Body(lambda models: models.view, lambda settings: settings.max_view_body_bytes)

IngestApi.routes = (
    Route(
        "POST",
        "/v1/views",
        IngestApi._post_view,
        Operation(
            "postView",
            "Record where the token's viewer is in a movie",
            {202: ViewAccepted},
            permission="write",
            body=_VIEW_BODY,
            errors=(503,),
        ),
    ),
    Route(
        "POST",
        "/v1/views:batch",
        IngestApi._post_view_batch,
        Operation(
            "postViewBatch",
            "Record a player's queued events; each is accepted or rejected on its own",
            {202: BatchOutcome, 207: BatchOutcome},
            permission="write",
            body=Body(lambda models: models.batch, lambda settings: settings.max_batch_body_bytes),
        ),
    ),
    Route(
        "POST",
        "/bigdata-api/v1/producer/views",
        IngestApi._post_seed_view,
        Operation(
            "postSeedView",
            "The seed service's endpoint, for its existing clients",
            {201: SeedAccepted},
            permission="write",
            body=Body(lambda models: models.seed, lambda settings: settings.max_view_body_bytes),
            errors=(503,),
        ),
    ),
    Route(
        "GET",
        "/v1/views/{movie_id}/position",
        IngestApi._get_position,
        Operation(
            "getPosition",
            "Where the token's viewer last was in a movie",
            {200: PositionOut},
            permission="read",
            path_parameters=PositionPath,
            errors=(404, 503),
        ),
    ),
    Route(
        "GET",
        "/v1/movies/most-watched",
        IngestApi._get_most_watched,
        Operation(
            "getMostWatched",
            "Movies by number of distinct viewers",
            {200: MostWatched},
            permission="read",
            query_parameters=MostWatchedQuery,
            errors=(503,),
        ),
    ),
    Route("GET", "/healthz", IngestApi._healthz, Operation("getHealth", "Liveness", {200: Health})),
    Route(
        "GET",
        "/openapi.json",
        IngestApi._openapi_json,
        Operation("getOpenApi", "This document", {200: None}),
    ),
    Route(
        "GET",
        "/docs",
        IngestApi._docs,
        Operation("getDocs", "A page rendering this document", {200: None}, media_type="text/html"),
    ),
)


def _rfc3339(moment: datetime) -> str:
    if moment.tzinfo is None:  # ClickHouse DateTime64(3, 'UTC') may come back naive
        moment = moment.replace(tzinfo=UTC)
    return moment.astimezone(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")
