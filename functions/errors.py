"""The project's exceptions: one base, one family per subsystem, each mapped to one outcome."""

from __future__ import annotations

__all__ = [
    "AuthError",
    "AuthUnavailable",
    "DeliveryFailed",
    "Forbidden",
    "InvalidRequest",
    "MissingToken",
    "PipelineError",
    "RateLimited",
    "RecordsRefused",
    "StoreUnavailable",
]


class PipelineError(Exception):
    """Base of every error this package raises on purpose."""


class AuthError(PipelineError):
    """The bearer token is malformed, badly signed, expired or not for us (HTTP 401)."""


class MissingToken(AuthError):
    """The request carries no bearer token at all (HTTP 401 without an error code)."""


class AuthUnavailable(PipelineError):
    """The signing keys cannot be fetched: not the client's fault, retry later (HTTP 503)."""


class Forbidden(PipelineError):
    """A valid token without the right to do this (HTTP 403).

    ``missing_permission`` names the permission when that is the reason, so the answer can say
    which one (RFC 6750 ``insufficient_scope``).
    """

    def __init__(self, detail: str, missing_permission: str | None = None) -> None:
        super().__init__(detail)
        self.missing_permission = missing_permission


class InvalidRequest(PipelineError):
    """The request itself is unacceptable (HTTP 400, 413, 415 or 422), with the failing fields."""

    def __init__(
        self, status: int, detail: str, errors: list[dict[str, str]] | None = None
    ) -> None:
        super().__init__(detail)
        self.status = status
        self.errors = errors


class RateLimited(PipelineError):
    """The caller sent more than its share: retry after ``retry_after_seconds`` (HTTP 429)."""

    def __init__(self, retry_after_seconds: int) -> None:
        super().__init__(f"too many requests; retry in {retry_after_seconds} s")
        self.retry_after_seconds = retry_after_seconds


class DeliveryFailed(PipelineError):
    """Kafka did not acknowledge a record in time: the client should retry later (HTTP 503)."""


class StoreUnavailable(PipelineError):
    """ClickHouse refused or failed an operation: retry later, commit nothing (HTTP 503)."""


class RecordsRefused(PipelineError):
    """ClickHouse is up and refused the records themselves (a line that is not a canonical
    record): sending the same records again fails the same way, so they must be judged one by
    one instead of retried."""
