"""The one route table of the ingest function: dispatch (``app.py``) and the OpenAPI document
(``openapi.py``) both read it, and nothing about a route is declared anywhere else.

Each route names its handler, its body model and size limit, its permission, its parameters and
its answers. ``configure`` resolves what depends on the deployment (the models narrowed to its
limits, the permission names, the body limits) once, for both readers.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass, replace
from typing import Literal

from pydantic import BaseModel
from starlette.responses import Response

from functions.api_models import (
    BatchOutcome,
    Health,
    MostWatched,
    MostWatchedQuery,
    PositionOut,
    PositionPath,
    Ready,
    SeedAccepted,
    ViewAccepted,
)
from functions.events import RequestModels, request_models
from functions.http.handlers import Handlers, Incoming
from functions.settings import Settings

__all__ = ["ROUTES", "Body", "ConfiguredRoute", "Operation", "Route", "configure"]

Permission = Literal["write", "read"]


@dataclass(frozen=True, slots=True)
class Body:
    """A route's JSON request body: its model and its size limit, both from the settings."""

    model: Callable[[RequestModels], type[BaseModel]]
    max_bytes: Callable[[Settings], int]


@dataclass(frozen=True, slots=True)
class Operation:
    """What one route takes and answers."""

    operation_id: str
    summary: str
    success: dict[int, type[BaseModel] | None]  # None: not a JSON model (the docs page)
    permission: Permission | None = None
    body: Body | None = None
    path_parameters: type[BaseModel] | None = None
    query_parameters: type[BaseModel] | None = None
    errors: tuple[int, ...] = ()  # beyond those implied by the permission, body and parameters
    media_type: str = "application/json"


@dataclass(frozen=True, slots=True)
class Route:
    method: str
    path: str  # an OpenAPI path template
    handler: Callable[[Handlers, Incoming], Awaitable[Response]]
    operation: Operation
    # False: served, but not an operation of the OpenAPI document (an alias of a documented
    # route, a file of the docs page).
    documented: bool = True


@dataclass(frozen=True, slots=True)
class ConfiguredRoute:
    """A route as one deployment serves and documents it."""

    route: Route
    permission: str | None  # the token permission required, by its configured name
    body_model: type[BaseModel] | None
    max_body_bytes: int


def permission_names(settings: Settings) -> dict[Permission, str]:
    return {"write": settings.jwt_write_permission, "read": settings.jwt_read_permission}


def configure(
    settings: Settings, routes: tuple[Route, ...] | None = None
) -> tuple[RequestModels, list[ConfiguredRoute]]:
    """The request models of ``settings`` and every route resolved against them."""
    models = request_models(settings.max_movie_time_offset_ms, settings.max_batch_events)
    permissions = permission_names(settings)
    configured = []
    for route in ROUTES if routes is None else routes:
        operation = route.operation
        body = operation.body
        configured.append(
            ConfiguredRoute(
                route,
                None if operation.permission is None else permissions[operation.permission],
                None if body is None else body.model(models),
                0 if body is None else body.max_bytes(settings),
            )
        )
    return models, configured


_VIEW_BODY = Body(lambda models: models.view, lambda settings: settings.max_view_body_bytes)

ROUTES: tuple[Route, ...] = (
    Route(
        "POST",
        "/v1/views",
        Handlers.post_view,
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
        Handlers.post_view_batch,
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
        Handlers.post_seed_view,
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
        Handlers.get_position,
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
        Handlers.get_most_watched,
        Operation(
            "getMostWatched",
            "Movies by number of distinct viewers",
            {200: MostWatched},
            permission="read",
            query_parameters=MostWatchedQuery,
            errors=(503,),
        ),
    ),
    Route("GET", "/healthz", Handlers.healthz, Operation("getHealth", "Liveness", {200: Health})),
    Route(
        "GET",
        "/readyz",
        Handlers.readyz,
        Operation(
            "getReadiness",
            "Readiness: Kafka and ClickHouse answer (checked at most about once a second)",
            {200: Ready},
            errors=(503,),
        ),
    ),
    Route(
        "GET",
        "/openapi.json",
        Handlers.openapi_json,
        Operation("getOpenApi", "This document", {200: None}),
    ),
    Route(
        "GET",
        "/docs",
        Handlers.docs,
        Operation("getDocs", "A page rendering this document", {200: None}, media_type="text/html"),
    ),
)


def _alias(path: str, of: str) -> Route:
    """The route of path ``of`` served under ``path`` too, as the same operation."""
    (route,) = (route for route in ROUTES if route.path == of)
    return replace(route, path=path, documented=False)


ROUTES += (
    # The seed service's paths of the document and of its page.
    _alias("/bigdata-api/openapi.json", of="/openapi.json"),
    _alias("/bigdata-api/openapi", of="/docs"),
    Route(
        "GET",
        "/docs/{asset}",
        Handlers.docs_asset,
        Operation("getDocsAsset", "A file the docs page loads", {200: None}, errors=(404,)),
        documented=False,
    ),
)
