"""RFC 9457 problem details: every error the functions answer is ``application/problem+json``."""

from __future__ import annotations

from collections.abc import Iterable
from http import HTTPStatus
from typing import Any

import orjson
from pydantic import BaseModel, ConfigDict, Field
from pydantic_core import ErrorDetails
from starlette.responses import Response

__all__ = [
    "PROBLEM_CONTENT_TYPE",
    "FieldError",
    "Problem",
    "field_errors",
    "problem_body",
    "problem_document",
    "problem_response",
]

PROBLEM_CONTENT_TYPE = "application/problem+json"


class FieldError(BaseModel):
    """One failing input field."""

    pointer: str = Field(
        description="JSON pointer as a URI fragment: `#/movie_id`, `#/events/3/event_time`, "
        "`#/query/limit`."
    )
    detail: str


class Problem(BaseModel):
    """RFC 9457 problem details; the documented shape of every error answer."""

    model_config = ConfigDict(extra="allow")

    type: str = "about:blank"
    title: str = Field(description="The HTTP status phrase.")
    status: int = Field(ge=400, le=599)
    detail: str = Field(description="What is wrong, for a human.")
    errors: list[FieldError] | None = Field(None, description="Each failing field of a 400/422.")


def problem_document(status: int, detail: str, **extensions: Any) -> dict[str, Any]:
    """A problem document; ``type`` stays ``about:blank``, so ``title`` is the status phrase.

    Extensions given as None are left out.
    """
    document: dict[str, Any] = {
        "type": "about:blank",
        "title": HTTPStatus(status).phrase,
        "status": status,
        "detail": detail,
    }
    document.update((name, value) for name, value in extensions.items() if value is not None)
    return document


def problem_body(status: int, detail: str, **extensions: Any) -> bytes:
    return orjson.dumps(problem_document(status, detail, **extensions))


def problem_response(
    status: int, detail: str, headers: dict[str, str] | None = None, **extensions: Any
) -> Response:
    return Response(
        problem_body(status, detail, **extensions),
        status_code=status,
        headers=headers,
        media_type=PROBLEM_CONTENT_TYPE,
    )


def field_errors(errors: Iterable[ErrorDetails], prefix: str = "#") -> list[dict[str, str]]:
    """Each failing field as ``{"pointer": "#/field", "detail": message}`` (RFC 9457 style)."""
    return [
        {
            "pointer": "/".join([prefix, *(str(part) for part in error["loc"])]),
            "detail": error["msg"],
        }
        for error in errors
    ]
