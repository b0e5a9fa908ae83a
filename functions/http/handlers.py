"""The handlers of the ingest function's routes: each takes an admitted request (authorized, its
body read within the route's limit) and returns the response.

Which handler serves which route, with which body model, is declared in ``routes.py``; a handler
parses its body with the model the route declares (``Incoming.body_as``). Kafka and ClickHouse
are reached through factories called on first use, so nothing with threads or sockets exists
before a worker forks.
"""

from __future__ import annotations

import asyncio
import logging
import re
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from functools import cache, cached_property, partial
from typing import Any, TypeVar

import orjson
from pydantic import BaseModel, ValidationError
from pydantic_core import ErrorDetails, from_json, to_json
from starlette.requests import Request
from starlette.responses import FileResponse, Response

from clickhouse.store import ViewStore
from functions.api_models import MAX_MOST_WATCHED_LIMIT, MostWatchedQuery, PositionPath
from functions.auth import Principal
from functions.errors import DeliveryFailed, Forbidden, InvalidRequest
from functions.events import (
    EventTimeWindow,
    RequestModels,
    SeedViewIn,
    ViewBatchIn,
    ViewEventIn,
    ViewRecord,
    invalid_json_message,
)
from functions.http.docs_page import DOCS_ASSETS, DOCS_PAGE, DOCS_POLICY
from functions.http.fair_share import SharedRefresh
from functions.problems import field_errors, problem_document, problem_response
from functions.producer import AsyncProducer
from functions.readiness import CHECK_TIMEOUT_SECONDS, Readiness
from functions.settings import Settings

__all__ = ["Handlers", "Incoming"]

log = logging.getLogger(__name__)

Model = TypeVar("Model", bound=BaseModel)

# The docs page's files change only with a deployment.
_DOCS_ASSET_CACHING = "public, max-age=3600"

# What a query parameter declared as an integer must look like: Python's int() would also take
# "+5", " 5" and "1_000", and the API promises no loose coercion.
_INTEGER = re.compile(r"-?[0-9]{1,18}")

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
    body_model: type[BaseModel] | None  # the route's, narrowed to the deployment's limits
    authorized: Principal | None

    @property
    def principal(self) -> Principal:
        if self.authorized is None:
            raise TypeError("this route has no permission, hence no principal")
        return self.authorized

    def body_as(self, expected: type[Model], context: Any = None) -> Model:
        """The body parsed with the route's model, else ``InvalidRequest`` (400 or 422)."""
        try:
            return self.validate_body(expected, context)
        except ValidationError as exc:
            raise _invalid_body(_errors(exc)) from exc

    def validate_body(self, expected: type[Model], context: Any = None) -> Model:
        """The body parsed with the route's model, which must be an ``expected``; raises
        pydantic's ``ValidationError``."""
        model = self.body_model
        if model is None or not issubclass(model, expected):
            raise TypeError(f"the route's body model is {model}, not a {expected.__name__}")
        return model.model_validate_json(self.body, context=context)


def _invalid_body(errors: list[ErrorDetails]) -> InvalidRequest:
    not_json = invalid_json_message(errors)
    if not_json is not None:
        return InvalidRequest(400, f"the body is not valid JSON: {not_json}")
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


@cache
def _integer_fields(model: type[BaseModel]) -> frozenset[str]:
    return frozenset(name for name, field in model.model_fields.items() if field.annotation is int)


def _parameters(model: type[Model], values: dict[str, str], location: str) -> Model:
    loose = [
        {"pointer": f"#/{location}/{name}", "detail": "Input should be a valid integer"}
        for name in _integer_fields(model)
        if name in values and _INTEGER.fullmatch(values[name]) is None
    ]
    if loose:
        raise InvalidRequest(422, f"invalid {location} parameters", errors=loose)
    try:
        return model.model_validate_strings(values)
    except ValidationError as exc:
        raise InvalidRequest(
            422,
            f"invalid {location} parameters",
            errors=field_errors(_errors(exc), f"#/{location}"),
        ) from exc


class Handlers:
    """The ingest function's handlers and what they reach: Kafka, ClickHouse, the document."""

    def __init__(
        self,
        settings: Settings,
        models: RequestModels,
        producer_factory: Callable[[], AsyncProducer],
        store_factory: Callable[[], ViewStore],
        openapi_document: Callable[[], bytes],
    ) -> None:
        self._settings = settings
        self._models = models
        self._producer_factory = producer_factory
        self._store_factory = store_factory
        self._openapi_document = openapi_document
        self._max_skew = timedelta(seconds=settings.max_event_time_skew_seconds)
        self._max_age = timedelta(seconds=settings.max_event_age_seconds)
        self._ranking = SharedRefresh(self._longest_ranking, settings.most_watched_max_age_seconds)

    @cached_property
    def _producer(self) -> AsyncProducer:
        return self._producer_factory()

    @cached_property
    def _openapi(self) -> bytes:
        return self._openapi_document()

    async def _store(self) -> ViewStore:
        # The first call connects (blocking); later calls return the cached store.
        return await asyncio.to_thread(self._store_factory)

    def _window(self, received_at: datetime) -> EventTimeWindow:
        return EventTimeWindow(received_at, self._max_skew, self._max_age)

    async def _produce(self, record: ViewRecord) -> None:
        key, value = record.to_kafka()
        await self._producer.send(self._settings.views_topic, key, value, record.event_id)

    async def healthz(self, incoming: Incoming) -> Response:
        return _json({"status": "ok"}, 200)

    @cached_property
    def _readiness(self) -> Readiness:
        # Kafka: the very producer the requests use. ClickHouse: the read routes need it.
        producer = self._producer
        return Readiness(
            {
                "kafka": partial(
                    producer.has_live_metadata, self._settings.views_topic, CHECK_TIMEOUT_SECONDS
                ),
                "clickhouse": lambda: self._store_factory().answers(CHECK_TIMEOUT_SECONDS),
            }
        )

    async def readyz(self, incoming: Incoming) -> Response:
        return await self._readiness.response()

    async def openapi_json(self, incoming: Incoming) -> Response:
        return Response(self._openapi, media_type="application/json")

    async def docs(self, incoming: Incoming) -> Response:
        return Response(
            DOCS_PAGE, media_type="text/html", headers={"Content-Security-Policy": DOCS_POLICY}
        )

    async def docs_asset(self, incoming: Incoming) -> Response:
        asset = DOCS_ASSETS.get(incoming.params["asset"])
        if asset is None:
            return problem_response(404, "no such file of the docs page")
        return FileResponse(
            asset.path,
            media_type=asset.media_type,
            headers={"Cache-Control": _DOCS_ASSET_CACHING},
        )

    async def post_view(self, incoming: Incoming) -> Response:
        received_at = datetime.now(UTC)
        event = incoming.body_as(ViewEventIn, context=self._window(received_at))
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

    async def post_view_batch(self, incoming: Incoming) -> Response:
        received_at = datetime.now(UTC)
        items: list[dict[str, Any]] = []
        records: list[tuple[int, ViewRecord]] = []  # (position in items, record)
        for event in self._batch_events(incoming, self._window(received_at)):
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
        self, incoming: Incoming, window: EventTimeWindow
    ) -> list[ViewEventIn | InvalidRequest]:
        """Each event of a batch, or what is wrong with it; ``InvalidRequest`` for the whole."""
        try:
            return list(incoming.validate_body(ViewBatchIn, context=window).events)
        except ValidationError as exc:
            errors = _errors(exc)
        by_item: dict[int, list[ErrorDetails]] = {}
        for error in errors:
            location = error["loc"]
            if len(location) < 2 or location[0] != "events" or not isinstance(location[1], int):
                raise _invalid_body(errors)  # the envelope itself is wrong
            by_item.setdefault(location[1], []).append(error)
        # Some events are wrong: judge the others alone (one pass sufficed for a clean batch),
        # with the batch model's item model (narrowed to the same limits).
        events: list[ViewEventIn | InvalidRequest] = []
        for index, item in enumerate(from_json(incoming.body)["events"]):
            if index in by_item:
                events.append(_invalid_body(by_item[index]))
            else:
                events.append(self._models.view.model_validate_json(to_json(item), context=window))
        return events

    async def post_seed_view(self, incoming: Incoming) -> Response:
        received_at = datetime.now(UTC)
        event = incoming.body_as(SeedViewIn)
        record = ViewRecord.from_request(
            user_id=incoming.principal.viewer(event.user_id),
            movie_id=event.movie_id,
            movie_time_offset=event.movie_time_offset,
            received_at=received_at,
        )
        await self._produce(record)
        return _json({"message": "acknowledged", "status": "success"}, 201)

    async def get_position(self, incoming: Incoming) -> Response:
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

    async def _longest_ranking(self) -> list[bytes]:
        """The ranking at the longest limit, each movie already encoded as JSON.

        The embedded engine runs one query at a time: one ranking for every caller and every
        limit, so that no caller can make the others wait; encoded once, so that an answer is a
        join of the first ``limit`` entries (~1 ms less per 1000 movies than encoding them).
        """
        store = await self._store()
        ranking = await asyncio.to_thread(store.most_watched, MAX_MOST_WATCHED_LIMIT)
        return [
            orjson.dumps({"movie_id": row.movie_id, "viewers": row.viewers, "events": row.events})
            for row in ranking
        ]

    async def get_most_watched(self, incoming: Incoming) -> Response:
        query = dict(incoming.request.query_params)
        limit = _parameters(MostWatchedQuery, query, "query").limit
        movies = b",".join((await self._ranking.get())[:limit])
        return Response(b'{"movies":[' + movies + b"]}", media_type="application/json")


def _rfc3339(moment: datetime) -> str:
    if moment.tzinfo is None:  # ClickHouse DateTime64(3, 'UTC') may come back naive
        moment = moment.replace(tzinfo=UTC)
    return moment.astimezone(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")
