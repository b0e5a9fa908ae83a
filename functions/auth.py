"""Local JWT verification (no call to an auth service per request) and dev tokens.

Tokens are verified with one configured algorithm and its key: an HS256 secret, an RS256/ES256
PEM public key, or the RS256/ES256 keys of a JWKS URL (see ``JwksKeys``). Keys are loaded once,
never per request. ``python -m functions.auth token --sub <uuid>`` prints a token signed with the
local secret (what ``make token`` runs); it only works for HS256 settings, as a dev convenience.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Protocol
from uuid import UUID

import jwt
from jwt.algorithms import get_default_algorithms

from functions.errors import AuthError, AuthUnavailable, Forbidden, MissingToken
from functions.events import CANONICAL_UUID
from functions.logs import error_fields, url_fields
from functions.settings import Settings, get_settings

__all__ = [
    "DEV_PERMISSIONS",
    "Authenticator",
    "JwksKeys",
    "Principal",
    "TokenVerifier",
    "UnverifiedViewer",
    "authenticator_from_settings",
    "issue_dev_token",
]

log = logging.getLogger(__name__)

# Checking a signature is most of the CPU of an ingest request (~100 µs here), and a player sends
# the same token for minutes: verified tokens are remembered, up to this many.
VERIFIED_TOKENS_CACHED = 10_000

# What a dev token may do: the write and read permissions of the default settings.
DEV_PERMISSIONS = ("ugc.views.write", "ugc.views.read")

_MAX_KID_LENGTH = 256

# Real access tokens are 1-2 KB; decoding a larger one is work an anonymous client could make the
# event loop do (a 4 MB forged token cost ~113 ms), so it is refused before base64 or JSON.
MAX_AUTHORIZATION_BYTES = 8192


@dataclass(frozen=True, slots=True)
class Principal:
    """The viewer behind a request; ``user_id`` None means "any viewer" (auth disabled)."""

    user_id: UUID | None
    permissions: frozenset[str]

    def require(self, permission: str) -> None:
        if permission not in self.permissions:
            raise Forbidden(f"the token lacks the '{permission}' permission", permission)

    def viewer(self, claimed: UUID | None) -> UUID:
        """The viewer an event is for: the token's subject; a body's ``user_id`` must match it."""
        if self.user_id is None:
            if claimed is None:
                raise Forbidden("without authentication the body must name its user_id")
            return claimed
        if claimed is not None and claimed != self.user_id:
            raise Forbidden("user_id is not the token's subject")
        return self.user_id


class Authenticator(Protocol):
    async def authenticate(self, authorization: str | None) -> Principal:
        """The principal of an ``Authorization`` header value, or an ``AuthError``."""
        ...


def _bearer_token(authorization: str | None) -> str:
    if not authorization:
        raise MissingToken("missing bearer token")
    if len(authorization) > MAX_AUTHORIZATION_BYTES:
        raise AuthError(f"the Authorization header is over {MAX_AUTHORIZATION_BYTES} bytes")
    scheme, _, token = authorization.partition(" ")
    token = token.strip()
    if scheme.lower() != "bearer" or not token:
        raise AuthError("the Authorization header must be 'Bearer <token>'")
    return token


def _subject(claims: dict[str, Any]) -> UUID:
    subject = claims.get("sub")
    if not isinstance(subject, str) or CANONICAL_UUID.fullmatch(subject) is None:
        raise AuthError("token subject is not a UUID")
    return UUID(subject)


class JwksKeys:
    """The signing keys of a JWKS URL, fetched off the event loop and cached.

    Cached keys are used until ``cache_seconds`` old, then refetched in the background while
    requests go on with the old ones. A token naming an unknown ``kid`` (a rotated key) makes the
    caller wait for a refetch, but fetches are at least ``min_refresh_seconds`` apart, so a flood
    of made-up ``kid``s costs the identity provider one request per interval. Only keys of the
    configured algorithm are kept: an ``oct`` or RSA key cannot verify an ES256-configured token.
    """

    def __init__(
        self,
        url: str,
        algorithm: str,
        cache_seconds: float,
        min_refresh_seconds: float,
        timeout_seconds: float,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._url_fields = url_fields(url)  # logged without credentials or query
        self._algorithm = algorithm
        self._cache_seconds = cache_seconds
        self._min_refresh_seconds = min_refresh_seconds
        self._clock = clock
        self._client = jwt.PyJWKClient(url, cache_jwk_set=False, timeout=timeout_seconds)
        self._keys: dict[str, jwt.PyJWK] = {}
        self._fetched_at: float | None = None  # last successful fetch
        self._attempted_at: float | None = None  # last fetch, successful or not
        self._lock = threading.Lock()
        self._background_refresh = False
        self.fetches = 0

    async def key_for(self, kid: str) -> jwt.PyJWK:
        """The key of ``kid``; ``AuthError`` if unknown, ``AuthUnavailable`` if none fetched."""
        key = self._keys.get(kid)
        if key is not None:
            self._refresh_if_stale()
            return key
        if self._may_fetch():
            await asyncio.to_thread(self.refresh)
            key = self._keys.get(kid)
        if key is not None:
            return key
        if self._fetched_at is None:
            raise AuthUnavailable("the signing keys could not be fetched")
        raise AuthError("the token's key id is not among the issuer's keys")

    def _may_fetch(self) -> bool:
        attempted = self._attempted_at
        return attempted is None or self._clock() - attempted >= self._min_refresh_seconds

    def _refresh_if_stale(self) -> None:
        fetched = self._fetched_at
        if fetched is None or self._clock() - fetched < self._cache_seconds:
            return
        if self._background_refresh or not self._may_fetch():
            return
        self._background_refresh = True
        threading.Thread(target=self.refresh, name="jwks-refresh", daemon=True).start()

    def refresh(self) -> None:
        """Fetch the JWKS now (blocking), unless another fetch happened within the interval."""
        with self._lock:
            try:
                if not self._may_fetch():  # another caller fetched while this one waited
                    return
                self._attempted_at = self._clock()
                self.fetches += 1
                self._keys = self._fetch()
                self._fetched_at = self._clock()
            except Exception as exc:  # keep serving the old keys; the next interval retries
                log.warning("JWKS fetch failed", extra={**self._url_fields, **error_fields(exc)})
            finally:
                self._background_refresh = False

    def _fetch(self) -> dict[str, jwt.PyJWK]:
        # PyJWKClient fetches (timeout, no redirects) and PyJWKSet parses, skipping keys this
        # library cannot use; the caching and its refresh policy stay ours (above).
        try:
            key_set = self._client.get_jwk_set(refresh=True)
        except jwt.PyJWKSetError:
            key_set = None  # a JWKS without a usable key: fetched, but nothing verifies
        keys = {
            key.key_id: key
            for key in key_set or ()
            if isinstance(key.key_id, str)
            and key.public_key_use in (None, "sig")
            and key.algorithm_name == self._algorithm
        }
        if not keys:
            log.warning(
                "JWKS has no usable key", extra={**self._url_fields, "algorithm": self._algorithm}
            )
        return keys


class TokenVerifier:
    """Verifies bearer tokens with one configured algorithm and a fixed key or a JWKS."""

    def __init__(
        self,
        settings: Settings,
        key: Any = None,
        jwks: JwksKeys | None = None,
    ) -> None:
        if (key is None) == (jwks is None):
            raise ValueError("a verifier needs a key or a JWKS, not both")
        self._key = key
        self._jwks = jwks
        # A single, configured algorithm: `alg: none` and HS/RS key confusion cannot pass.
        self._algorithms = [settings.jwt_algorithm]
        self._leeway = settings.jwt_leeway_seconds
        self._issuer = settings.jwt_issuer
        self._audience = settings.jwt_audience
        self._permissions_claim = settings.jwt_permissions_claim
        self._max_lifetime = settings.jwt_max_lifetime_seconds
        required = ["exp", "sub"] + (["iss"] if self._issuer else [])
        self._options: dict[str, Any] = {
            "require": required + (["iat"] if settings.jwt_require_iat else []),
            "enforce_minimum_key_length": True,
        }
        # Only successes are remembered, with the key that verified them (a JWKS key that rotates
        # out stops vouching for its tokens), and `exp`, the one claim that can turn a verified
        # token invalid later, is checked again on every use.
        self._verified: dict[str, tuple[Any, Principal, float]] = {}

    @classmethod
    def from_settings(cls, settings: Settings) -> TokenVerifier:
        """A verifier with its key material loaded and checked now, once."""
        if settings.jwt_jwks_url is not None:
            jwks = JwksKeys(
                settings.jwt_jwks_url,
                settings.jwt_algorithm,
                settings.jwt_jwks_cache_seconds,
                settings.jwt_jwks_min_refresh_seconds,
                settings.jwt_jwks_timeout_seconds,
            )
            return cls(settings, jwks=jwks)
        algorithm = get_default_algorithms()[settings.jwt_algorithm]
        # Raises for a PEM given as HS256 secret or a key of the wrong type (HS/RS confusion).
        key = algorithm.prepare_key(settings.jwt_verification_key())
        too_short = algorithm.check_key_length(key)
        if too_short:
            raise ValueError(too_short)
        return cls(settings, key=key)

    async def authenticate(self, authorization: str | None) -> Principal:
        token = _bearer_token(authorization)
        key = self._key if self._jwks is None else await self._jwks.key_for(_key_id(token))
        verified = self._verified.get(token)
        if verified is None or verified[0] is not key:
            verified = (key, *self._decode_signed(token, key))
            if len(self._verified) >= VERIFIED_TOKENS_CACHED:
                del self._verified[next(iter(self._verified))]
            self._verified[token] = verified
        _, principal, expires_at = verified
        if time.time() >= expires_at + self._leeway:  # PyJWT's own test of `exp`
            raise AuthError("token expired")
        return principal

    def _decode_signed(self, token: str, key: Any) -> tuple[Principal, float]:
        """The principal a token names and its expiry, once its signature and claims passed."""
        try:
            claims = jwt.decode(
                token,
                key,
                algorithms=self._algorithms,
                leeway=self._leeway,
                issuer=self._issuer,
                audience=self._audience,
                options=self._options,  # type: ignore[arg-type]
            )
        except jwt.ExpiredSignatureError as exc:
            raise AuthError("token expired") from exc
        except jwt.InvalidTokenError as exc:
            raise AuthError(f"invalid token: {exc}") from exc
        expires_at = self._expiry(claims)
        return Principal(_subject(claims), self._permissions(claims)), expires_at

    def _expiry(self, claims: dict[str, Any]) -> float:
        """``exp``, once it is an integer within the longest lifetime a token may have.

        PyJWT takes anything ``int()`` accepts (``"123"``, ``1e308``) and any distance ahead.
        """
        expires_at, issued_at = claims["exp"], claims.get("iat")
        for name, value in (("exp", expires_at), ("iat", issued_at)):
            if value is not None and type(value) is not int:  # bool is an int subclass
                raise AuthError(f"token claim '{name}' is not an integer")
        start = time.time() if issued_at is None else issued_at
        if expires_at - start > self._max_lifetime + self._leeway:
            raise AuthError(f"token lifetime is over {self._max_lifetime} seconds")
        return float(expires_at)

    def _permissions(self, claims: dict[str, Any]) -> frozenset[str]:
        granted = claims.get(self._permissions_claim, [])
        if isinstance(granted, str):  # OAuth `scope` style
            return frozenset(granted.split())
        if isinstance(granted, list) and all(isinstance(p, str) for p in granted):
            return frozenset(granted)
        raise AuthError(f"token claim '{self._permissions_claim}' is not a list of strings")


def _key_id(token: str) -> str:
    try:
        kid = jwt.get_unverified_header(token).get("kid")
    except jwt.InvalidTokenError as exc:
        raise AuthError(f"invalid token: {exc}") from exc
    if not isinstance(kid, str) or not 0 < len(kid) <= _MAX_KID_LENGTH:
        raise AuthError("the token header names no key id ('kid')")
    return kid


class UnverifiedViewer:
    """Authentication switched off: anyone may do anything (``AUTH_DISABLED_INSECURE``)."""

    def __init__(self, settings: Settings) -> None:
        self._everything = frozenset({settings.jwt_write_permission, settings.jwt_read_permission})

    async def authenticate(self, authorization: str | None) -> Principal:
        if not authorization:
            return Principal(None, self._everything)
        try:
            claims = jwt.decode(_bearer_token(authorization), options={"verify_signature": False})
        except jwt.InvalidTokenError as exc:
            raise AuthError(f"invalid token: {exc}") from exc
        return Principal(_subject(claims), self._everything)


def authenticator_from_settings(settings: Settings) -> Authenticator:
    if settings.auth_disabled_insecure:
        log.warning(
            "AUTHENTICATION IS DISABLED (AUTH_DISABLED_INSECURE=true): anyone can write any "
            "viewer's events and read any viewer's positions. Local experiments only."
        )
        return UnverifiedViewer(settings)
    return TokenVerifier.from_settings(settings)


def issue_dev_token(settings: Settings, subject: UUID, ttl_seconds: int) -> str:
    """A token the local API accepts, signed with the configured HS256 secret."""
    if settings.jwt_algorithm != "HS256":
        raise SystemExit("dev tokens need JWT_ALGORITHM=HS256 (the local default)")
    now = int(time.time())
    claims: dict[str, Any] = {
        "sub": str(subject),
        "iat": now,
        "exp": now + ttl_seconds,
        settings.jwt_permissions_claim: [
            settings.jwt_write_permission,
            settings.jwt_read_permission,
        ],
    }
    if settings.jwt_issuer:
        claims["iss"] = settings.jwt_issuer
    if settings.jwt_audience:
        claims["aud"] = settings.jwt_audience
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
