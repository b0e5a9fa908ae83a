"""The project's exceptions: one base, one family per subsystem, each mapped to one outcome."""

from __future__ import annotations

__all__ = [
    "AuthError",
    "DeliveryFailed",
    "PipelineError",
    "StoreUnavailable",
]


class PipelineError(Exception):
    """Base of every error this package raises on purpose."""


class AuthError(PipelineError):
    """The bearer token is missing, malformed, badly signed or expired (HTTP 401)."""


class DeliveryFailed(PipelineError):
    """Kafka did not acknowledge a record in time: the client should retry later (HTTP 503)."""


class StoreUnavailable(PipelineError):
    """ClickHouse refused or failed an operation: retry later, commit nothing (HTTP 503)."""
