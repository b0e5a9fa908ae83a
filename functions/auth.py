"""Local JWT verification (no call to an auth service per request) and dev tokens.

``python -m functions.auth token --sub <uuid>`` prints a token signed with the local secret
(what ``make token`` runs); it only works for HS256 settings, as a dev convenience.
"""

from __future__ import annotations

import argparse
import sys
import time
from dataclasses import dataclass
from functools import lru_cache
from uuid import UUID

import jwt

from functions.errors import AuthError
from functions.settings import Settings, get_settings

__all__ = ["DEV_PERMISSIONS", "Principal", "TokenVerifier", "issue_dev_token"]

# Checking a signature is most of the CPU of an ingest request (~100 µs here), and a player sends
# the same token for minutes: verified tokens are remembered, up to this many.
VERIFIED_TOKENS_CACHED = 10_000

# What a dev token may do; the permission checks of the API hardening read the same claim.
DEV_PERMISSIONS = ("ugc.views.write", "ugc.views.read")


@dataclass(frozen=True, slots=True)
class Principal:
    """The verified viewer behind a request."""

    user_id: UUID
    permissions: frozenset[str]


class TokenVerifier:
    """Verifies bearer tokens with one configured algorithm and key."""

    def __init__(self, algorithm: str, key: str, leeway_seconds: int) -> None:
        # A single, configured algorithm: `alg: none` and HS/RS key confusion cannot pass.
        self._algorithms = [algorithm]
        self._key = key
        self._leeway = leeway_seconds
        # Only successes are cached (an exception is never remembered), and the one claim that
        # can turn a verified token invalid later, `exp`, is checked again on every use.
        self._decode = lru_cache(maxsize=VERIFIED_TOKENS_CACHED)(self._decode_signed)

    @classmethod
    def from_settings(cls, settings: Settings) -> TokenVerifier:
        return cls(
            settings.jwt_algorithm, settings.jwt_verification_key(), settings.jwt_leeway_seconds
        )

    def verify(self, authorization: str | None) -> Principal:
        """The principal of an ``Authorization: Bearer`` header value, or ``AuthError``."""
        if not authorization:
            raise AuthError("missing bearer token")
        scheme, _, token = authorization.partition(" ")
        if scheme.lower() != "bearer" or not token.strip():
            raise AuthError("the Authorization header must be 'Bearer <token>'")
        principal, expires_at = self._decode(token.strip())
        if time.time() >= expires_at + self._leeway:  # PyJWT's own test of `exp`
            raise AuthError("token expired")
        return principal

    def _decode_signed(self, token: str) -> tuple[Principal, float]:
        """The principal a token names and its expiry, once its signature and claims passed."""
        try:
            claims = jwt.decode(
                token,
                self._key,
                algorithms=self._algorithms,
                leeway=self._leeway,
                options={"require": ["exp", "sub"]},
            )
        except jwt.ExpiredSignatureError as exc:
            raise AuthError("token expired") from exc
        except jwt.InvalidTokenError as exc:
            raise AuthError(f"invalid token: {exc}") from exc
        try:
            user_id = UUID(claims["sub"])
        except (ValueError, TypeError, AttributeError) as exc:
            raise AuthError("token subject is not a UUID") from exc
        permissions = claims.get("permissions", [])
        if not isinstance(permissions, list):
            raise AuthError("token 'permissions' claim is not a list")
        return Principal(user_id, frozenset(str(p) for p in permissions)), float(claims["exp"])


def issue_dev_token(settings: Settings, subject: UUID, ttl_seconds: int) -> str:
    """A token the local API accepts, signed with the configured HS256 secret."""
    if settings.jwt_algorithm != "HS256":
        raise SystemExit("dev tokens need JWT_ALGORITHM=HS256 (the local default)")
    now = int(time.time())
    claims = {
        "sub": str(subject),
        "iat": now,
        "exp": now + ttl_seconds,
        "permissions": list(DEV_PERMISSIONS),
    }
    return jwt.encode(claims, settings.jwt_verification_key(), algorithm="HS256")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m functions.auth")
    commands = parser.add_subparsers(dest="command", required=True)
    token = commands.add_parser("token", help="print a dev access token")
    token.add_argument("--sub", type=UUID, required=True, help="the viewer's user id")
    token.add_argument("--ttl", type=int, default=24 * 3600, help="lifetime in seconds")
    args = parser.parse_args(argv)
    sys.stdout.write(issue_dev_token(get_settings(), args.sub, args.ttl) + "\n")


if __name__ == "__main__":
    main()
