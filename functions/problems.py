"""RFC 9457 problem details: every error the functions answer is ``application/problem+json``."""

from __future__ import annotations

from http import HTTPStatus
from typing import Any

import orjson
from pydantic import ValidationError
from starlette.responses import Response

__all__ = [
    "PROBLEM_CONTENT_TYPE",
    "field_errors",
    "problem_body",
    "problem_response",
]

PROBLEM_CONTENT_TYPE = "application/problem+json"


def problem_body(status: int, detail: str, **extensions: Any) -> bytes:
    """A problem document; ``type`` stays ``about:blank``, so ``title`` is the status phrase."""
    document: dict[str, Any] = {
        "type": "about:blank",
        "title": HTTPStatus(status).phrase,
        "status": status,
        "detail": detail,
    }
    document.update(extensions)
    return orjson.dumps(document)


def problem_response(
    status: int, detail: str, headers: dict[str, str] | None = None, **extensions: Any
) -> Response:
    return Response(
        problem_body(status, detail, **extensions),
        status_code=status,
        headers=headers,
        media_type=PROBLEM_CONTENT_TYPE,
    )


def field_errors(exc: ValidationError, prefix: str = "#") -> list[dict[str, str]]:
    """Each failing field as ``{"pointer": "#/field", "detail": message}`` (RFC 9457 style)."""
    return [
        {
            "pointer": prefix + "/" + "/".join(str(part) for part in error["loc"]),
            "detail": error["msg"],
        }
        for error in exc.errors(include_url=False, include_input=False)
    ]
