"""The ingest function's ASGI app: dispatch on the route table and the error -> problem mapping.

``IngestApi.handle`` takes a Starlette request and returns a response; ``functions/main.py``
registers it as a functions-framework ASGI function. For each request: match a route of
``routes.py`` (paths compiled with Starlette's ``compile_path``), authorize it and read its body
within the route's limit, call its handler, and turn every error into an RFC 9457 problem.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Callable
from functools import partial
from uuid import UUID

import orjson
from starlette.requests import ClientDisconnect, Request
from starlette.responses import Response
from starlette.routing import compile_path

from clickhouse.store import ViewStore
from functions import telemetry
from functions.auth import authenticator_from_settings
from functions.errors import (
    AuthError,
    AuthUnavailable,
    DeliveryFailed,
    Forbidden,
    InvalidRequest,
    MissingToken,
    RateLimited,
    StoreUnavailable,
)
from functions.http.fair_share import TokenBuckets
from functions.http.handlers import Handlers, Incoming
from functions.http.openapi import openapi_document
from functions.http.routes import ConfiguredRoute, configure
from functions.problems import problem_response
from functions.producer import AsyncProducer
from functions.settings import Settings

__all__ = ["IngestApi", "path_pattern", "read_json_body"]

log = logging.getLogger(__name__)


def path_pattern(template: str) -> re.Pattern[str]:
    """The regex of an OpenAPI path template: ``{name}`` matches one non-empty segment."""
    return compile_path(template)[0]


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


class IngestApi:
    """The HTTP contract of the ingest function: routes, authentication, problem answers."""

    def __init__(
        self,
        settings: Settings,
        producer_factory: Callable[[], AsyncProducer],
        store_factory: Callable[[], ViewStore],
    ) -> None:
        self._settings = settings
        self._authenticator = authenticator_from_settings(settings)
        models, routes = configure(settings)
        self._handlers = Handlers(
            settings,
            models,
            producer_factory,
            store_factory,
            lambda: orjson.dumps(openapi_document(settings)),
        )
        self._dispatch = [(route, path_pattern(route.route.path)) for route in routes]
        self._buckets = (
            TokenBuckets(settings.rate_limit_per_second, settings.rate_limit_burst)
            if settings.rate_limit_per_second > 0
            else None
        )
        self._telemetry = telemetry.ingest()

    async def handle(self, request: Request) -> Response:
        """Answer one request; every error is a problem document, never a bare 500. Traced, in
        a SERVER span named by the route template."""
        matched = self._match(request)
        if self._telemetry is None:
            return await self._answer(request, matched)
        return await self._telemetry.serve(
            request,
            None if matched is None else matched[0].route.path,
            partial(self._answer, matched=matched),
            carries_events=matched is not None and matched[0].body_model is not None,
        )

    def _match(self, request: Request) -> tuple[ConfiguredRoute, dict[str, str]] | None:
        """The route of the request's method and path, with the path's parameters."""
        path = request.scope["path"].rstrip("/") or "/"  # request.url would build a whole URL
        for configured, pattern in self._dispatch:
            if configured.route.method == request.method:
                match = pattern.fullmatch(path)
                if match is not None:
                    return configured, match.groupdict()
        return None

    async def _answer(
        self, request: Request, matched: tuple[ConfiguredRoute, dict[str, str]] | None
    ) -> Response:
        if matched is None:
            return self._unrouted(request)
        configured, params = matched
        response = await self._serve(configured, request, params)
        if configured.permission is not None:
            # A viewer's own data, or a refusal about its token: no cache may keep it.
            response.headers["Cache-Control"] = "no-store"
        return response

    def _unrouted(self, request: Request) -> Response:
        """404, or 405 naming the methods the path has (no route has the request's)."""
        path = request.scope["path"].rstrip("/") or "/"
        allowed = [
            configured.route.method
            for configured, pattern in self._dispatch
            if pattern.fullmatch(path) is not None
        ]
        if allowed:
            return problem_response(
                405, f"{request.method} is not allowed here", headers={"Allow": ", ".join(allowed)}
            )
        return problem_response(404, f"no route for {path}")

    async def _serve(
        self, configured: ConfiguredRoute, request: Request, params: dict[str, str]
    ) -> Response:
        route = configured.route
        try:
            incoming = await self._admit(configured, request, params)
            return await route.handler(self._handlers, incoming)
        except MissingToken as exc:
            return problem_response(401, str(exc), headers={"WWW-Authenticate": "Bearer"})
        except AuthError as exc:
            return problem_response(
                401, str(exc), headers={"WWW-Authenticate": 'Bearer error="invalid_token"'}
            )
        except Forbidden as exc:
            headers = None
            if exc.missing_permission is not None:
                challenge = f'Bearer error="insufficient_scope", scope="{exc.missing_permission}"'
                headers = {"WWW-Authenticate": challenge}
            return problem_response(403, str(exc), headers=headers)
        except InvalidRequest as exc:
            return problem_response(exc.status, str(exc), errors=exc.errors)
        except RateLimited as exc:
            return problem_response(
                429, str(exc), headers={"Retry-After": str(exc.retry_after_seconds)}
            )
        except ClientDisconnect:
            # Not a fault of the function: the client hung up (or missed the body
            # deadline); the answer goes nowhere.
            log.debug("client disconnected", extra={"path": route.path})
            return Response(status_code=499)
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

    async def _admit(
        self, route: ConfiguredRoute, request: Request, params: dict[str, str]
    ) -> Incoming:
        # Order: who (401), may they (403), then the body (415, 413) — nothing is read for a
        # caller who may not write.
        principal = None
        # Routes without a permission (health, the document) answer from memory and are not
        # charged: a probe must never get a 429 because a client behind the same address flooded.
        if route.permission is not None:
            try:
                principal = await self._authenticator.authenticate(
                    request.headers.get("authorization")
                )
            except AuthError:
                self._take_share(request, None)  # forged tokens are charged to the address
                raise
            self._take_share(request, principal.user_id)
            principal.require(route.permission)
        body = b""
        if route.body_model is not None:
            body = await read_json_body(request, route.max_body_bytes)
        return Incoming(request, params, body, route.body_model, principal)

    def _take_share(self, request: Request, viewer: UUID | None) -> None:
        """A token of the viewer's bucket (of the client address's when there is no viewer)."""
        if self._buckets is None:
            return
        client = request.scope.get("client")
        self._buckets.take(viewer or (client[0] if client else None))

    def _unavailable(self, detail: str) -> Response:
        return problem_response(
            503, detail, headers={"Retry-After": str(self._settings.retry_after_seconds)}
        )
