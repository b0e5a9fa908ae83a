"""Token verification: the attacks the issue lists, key sources, permissions and the JWKS cache.

Verifier-level tests call ``authenticate`` directly (no broker needed); the HTTP answers (status
codes and challenges) are in ``test_auth_http.py``.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import hmac
import logging
import os
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Iterator
from datetime import timedelta
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import jwt
import orjson
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from localkafka import free_port
from pydantic import ValidationError
from support import JWT_SECRET, eventually, make_token, repo_root

from functions.auth import (
    DEV_PERMISSIONS,
    JwksKeys,
    Principal,
    TokenVerifier,
    UnverifiedViewer,
    authenticator_from_settings,
    issue_dev_token,
)
from functions.errors import AuthError, AuthUnavailable, Forbidden, MissingToken
from functions.settings import Settings

RSA_KEY = rsa.generate_private_key(public_exponent=65537, key_size=2048)
OTHER_RSA_KEY = rsa.generate_private_key(public_exponent=65537, key_size=2048)
EC_KEY = ec.generate_private_key(ec.SECP256R1())


def _public_pem(key: rsa.RSAPrivateKey | ec.EllipticCurvePrivateKey) -> bytes:
    return key.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def _claims(subject: uuid.UUID, **overrides: Any) -> dict[str, Any]:
    now = int(time.time())
    claims: dict[str, Any] = {
        "sub": str(subject),
        "iat": now,
        "exp": now + 300,
        "permissions": list(DEV_PERMISSIONS),
    }
    claims.update(overrides)
    return {name: value for name, value in claims.items() if value is not None}


def _hs256_settings(**overrides: Any) -> Settings:
    return Settings(**{"jwt_algorithm": "HS256", "jwt_secret": JWT_SECRET, **overrides})


def _authenticate(verifier: Any, token: str) -> Principal:
    result: Principal = asyncio.run(verifier.authenticate(f"Bearer {token}"))
    return result


def _rejects(verifier: Any, token: str, match: str = "") -> AuthError:
    with pytest.raises(AuthError, match=match) as caught:
        _authenticate(verifier, token)
    return caught.value


@pytest.fixture(scope="module")
def hs256() -> TokenVerifier:
    return TokenVerifier.from_settings(_hs256_settings())


@pytest.fixture(scope="module")
def rs256_pem(tmp_path_factory: pytest.TempPathFactory) -> TokenVerifier:
    pem = tmp_path_factory.mktemp("keys") / "rs256.pem"
    pem.write_bytes(_public_pem(RSA_KEY))
    return TokenVerifier.from_settings(
        Settings(jwt_algorithm="RS256", jwt_public_key_file=pem, jwt_secret=None)
    )


def test_dev_token_is_accepted_with_both_permissions(hs256: TokenVerifier) -> None:
    user = uuid.uuid4()
    principal = _authenticate(hs256, issue_dev_token(_hs256_settings(), user, 60))
    assert principal == Principal(user, frozenset(DEV_PERMISSIONS))


def test_alg_none_is_rejected(hs256: TokenVerifier) -> None:
    header = _b64(b'{"alg":"none","typ":"JWT"}')
    payload = _b64(orjson.dumps(_claims(uuid.uuid4())))
    _rejects(hs256, f"{header}.{payload}.", "alg")


def test_other_hmac_algorithm_is_rejected(hs256: TokenVerifier) -> None:
    token = jwt.encode(_claims(uuid.uuid4()), JWT_SECRET * 2, algorithm="HS512")
    _rejects(hs256, token, "alg value is not allowed")


def test_hs256_token_signed_with_the_rs_public_key_is_rejected(rs256_pem: TokenVerifier) -> None:
    # The classic key confusion: the attacker knows the public key and uses it as HMAC secret.
    header = _b64(b'{"alg":"HS256","typ":"JWT"}')
    payload = _b64(orjson.dumps(_claims(uuid.uuid4())))
    signing_input = f"{header}.{payload}".encode()
    signature = hmac.new(_public_pem(RSA_KEY), signing_input, hashlib.sha256).digest()
    _rejects(rs256_pem, f"{header}.{payload}.{_b64(signature)}", "alg value is not allowed")


@pytest.mark.parametrize(
    ("algorithm", "key", "other_key", "foreign"),
    [
        ("RS256", RSA_KEY, OTHER_RSA_KEY, ("ES256", EC_KEY)),
        ("ES256", EC_KEY, ec.generate_private_key(ec.SECP256R1()), ("RS256", RSA_KEY)),
    ],
)
def test_public_key_from_pem_file(
    tmp_path: Path, algorithm: str, key: Any, other_key: Any, foreign: tuple[str, Any]
) -> None:
    (tmp_path / "public.pem").write_bytes(_public_pem(key))
    verifier = TokenVerifier.from_settings(
        Settings(jwt_algorithm=algorithm, jwt_public_key_file=tmp_path / "public.pem")  # type: ignore[arg-type]
    )
    user = uuid.uuid4()
    assert _authenticate(verifier, jwt.encode(_claims(user), key, algorithm)).user_id == user
    _rejects(verifier, jwt.encode(_claims(user), other_key, algorithm), "Signature")
    _rejects(verifier, jwt.encode(_claims(user), foreign[1], foreign[0]), "alg value")
    _rejects(verifier, jwt.encode(_claims(user), "x" * 32, "HS256"), "alg value")


@pytest.mark.parametrize(
    ("changes", "match"),
    [
        ({"exp": -120}, "expired"),  # times: seconds from now, beyond the 30 s leeway
        ({"nbf": 120}, "not yet valid"),
        ({"iat": 120}, "not yet valid"),
        ({"exp": None}, "exp"),
        ({"sub": None}, "sub"),
        ({"sub": "not-a-uuid"}, "subject"),
        ({"sub": uuid.UUID(int=7).hex}, "subject"),  # 32 bare hex digits: not canonical
        ({"aud": "some-other-service"}, "(?i)audience"),
        ({"permissions": {"write": True}}, "permissions"),
    ],
)
def test_claims_are_checked(hs256: TokenVerifier, changes: dict[str, Any], match: str) -> None:
    now = int(time.time())
    changes = {
        name: now + value if name in ("exp", "nbf", "iat") and value is not None else value
        for name, value in changes.items()
    }
    token = jwt.encode(_claims(uuid.uuid4(), **changes), JWT_SECRET, "HS256")
    _rejects(hs256, token, match)


def test_small_clock_skew_is_tolerated(hs256: TokenVerifier) -> None:
    user = uuid.uuid4()
    token = make_token(user, expires_in=timedelta(seconds=-10))  # leeway is 30 s
    assert _authenticate(hs256, token).user_id == user


@pytest.mark.parametrize(
    "header", [None, "", "Bearer", "Bearer ", "Basic dXNlcjpwdw==", "Bearer not.a.jwt", "Bearer x"]
)
def test_malformed_headers_are_rejected(hs256: TokenVerifier, header: str | None) -> None:
    expected = MissingToken if not header else AuthError
    with pytest.raises(expected):
        asyncio.run(hs256.authenticate(header))


def test_issuer_and_audience_are_checked_when_configured() -> None:
    verifier = TokenVerifier.from_settings(
        _hs256_settings(jwt_issuer="https://id.example", jwt_audience="watch-progress")
    )
    user = uuid.uuid4()
    good = {"iss": "https://id.example", "aud": "watch-progress"}
    assert _authenticate(verifier, make_token(user, **good)).user_id == user
    _rejects(verifier, make_token(user, **{**good, "iss": "https://evil.example"}), "issuer")
    _rejects(verifier, make_token(user, **{**good, "aud": "other"}), "(?i)audience")
    _rejects(verifier, make_token(user, iss="https://id.example"), "aud")
    _rejects(verifier, make_token(user, aud="watch-progress"), "iss")


def test_dev_token_carries_configured_issuer_audience_and_claim_name() -> None:
    settings = _hs256_settings(
        jwt_issuer="local", jwt_audience="api", jwt_permissions_claim="scope"
    )
    principal = _authenticate(
        TokenVerifier.from_settings(settings), issue_dev_token(settings, uuid.uuid4(), 60)
    )
    assert principal.permissions == frozenset(DEV_PERMISSIONS)


def test_scope_string_claim() -> None:
    verifier = TokenVerifier.from_settings(_hs256_settings(jwt_permissions_claim="scope"))
    token = make_token(uuid.uuid4(), scope="openid ugc.views.read")
    assert _authenticate(verifier, token).permissions == {"openid", "ugc.views.read"}


def test_principal_permissions_and_viewer() -> None:
    user, other = uuid.uuid4(), uuid.uuid4()
    principal = Principal(user, frozenset({"ugc.views.read"}))
    principal.require("ugc.views.read")
    with pytest.raises(Forbidden) as caught:
        principal.require("ugc.views.write")
    assert caught.value.missing_permission == "ugc.views.write"
    assert principal.viewer(None) == user
    assert principal.viewer(user) == user
    with pytest.raises(Forbidden, match="subject"):
        principal.viewer(other)
    anyone = Principal(None, frozenset())
    assert anyone.viewer(other) == other
    with pytest.raises(Forbidden):
        anyone.viewer(None)


# --- key material at start-up -------------------------------------------------------------------


def test_pem_as_hs256_secret_is_refused_at_start() -> None:
    settings = _hs256_settings(jwt_secret=_public_pem(RSA_KEY).decode())
    with pytest.raises(jwt.InvalidKeyError):
        TokenVerifier.from_settings(settings)


def test_short_hs256_secret_is_refused_at_start() -> None:
    with pytest.raises(ValueError, match="HMAC key"):
        TokenVerifier.from_settings(_hs256_settings(jwt_secret="too-short"))


def test_key_files_are_read_with_the_settings_and_a_missing_one_is_named(tmp_path: Path) -> None:
    # Read when the settings are, at import in the gunicorn master: a missing mounted Secret
    # stops the process with one line, not each worker at its first request.
    secret = tmp_path / "secret"
    secret.write_text(JWT_SECRET + "\n")
    assert Settings(jwt_secret_file=secret).jwt_verification_key() == JWT_SECRET
    with pytest.raises(ValidationError, match=f"JWT_SECRET_FILE {tmp_path / 'gone'}"):
        Settings(jwt_secret_file=tmp_path / "gone")
    with pytest.raises(ValidationError, match="jwt_public_key_file"):
        Settings(jwt_algorithm="RS256", jwt_public_key_file=tmp_path / "gone.pem")


def test_wrong_key_type_for_the_algorithm_is_refused_at_start(tmp_path: Path) -> None:
    pem = tmp_path / "ec.pem"
    pem.write_bytes(_public_pem(EC_KEY))
    with pytest.raises(jwt.InvalidKeyError):
        TokenVerifier.from_settings(Settings(jwt_algorithm="RS256", jwt_public_key_file=pem))


@pytest.mark.parametrize(
    "overrides",
    [
        {"jwt_algorithm": "RS256"},
        {"jwt_algorithm": "RS256", "jwt_jwks_url": "http://a/jwks", "jwt_public_key_file": "k"},
        {"jwt_algorithm": "HS256", "jwt_secret": JWT_SECRET, "jwt_jwks_url": "http://a/jwks"},
        {"jwt_algorithm": "HS256"},
        {"jwt_algorithm": "RS256", "jwt_jwks_url": "file:///etc/passwd"},
        {"jwt_algorithm": "none"},
    ],
)
def test_inconsistent_auth_settings_are_refused(overrides: dict[str, Any]) -> None:
    with pytest.raises(ValidationError):
        Settings(**overrides)


def test_disabled_auth_is_loud_and_takes_the_viewer_from_the_body(
    caplog: pytest.LogCaptureFixture,
) -> None:
    with caplog.at_level(logging.WARNING, logger="functions.auth"):
        authenticator = authenticator_from_settings(_hs256_settings(auth_disabled_insecure=True))
    assert isinstance(authenticator, UnverifiedViewer)
    assert "AUTHENTICATION IS DISABLED" in caplog.text
    anyone = asyncio.run(authenticator.authenticate(None))
    assert anyone.user_id is None
    user = uuid.uuid4()
    token = make_token(user, secret="any-secret-at-all-because-nothing-is-checked")
    assert asyncio.run(authenticator.authenticate(f"Bearer {token}")).user_id == user


def test_auth_is_on_by_default() -> None:
    assert Settings.model_fields["auth_disabled_insecure"].default is False
    assert isinstance(authenticator_from_settings(_hs256_settings()), TokenVerifier)


# --- JWKS ----------------------------------------------------------------------------------------


class JwksServer:
    """A JWKS document served on 127.0.0.1, counting the fetches; tests swap its keys."""

    def __init__(self) -> None:
        self.keys: list[dict[str, Any]] = []
        self.fetches = 0
        server = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                server.fetches += 1
                body = orjson.dumps({"keys": server.keys})
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args: object) -> None:
                pass

        self._http = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self._http.server_address[1]}/.well-known/jwks.json"
        self._thread = threading.Thread(target=self._http.serve_forever, daemon=True)

    def __enter__(self) -> JwksServer:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._http.shutdown()
        self._http.server_close()


def jwk(
    key: rsa.RSAPrivateKey | ec.EllipticCurvePrivateKey, kid: str, **extra: Any
) -> dict[str, Any]:
    algorithm = (
        jwt.algorithms.RSAAlgorithm
        if isinstance(key, rsa.RSAPrivateKey)
        else jwt.algorithms.ECAlgorithm
    )
    document: dict[str, Any] = orjson.loads(algorithm.to_jwk(key.public_key()))
    return {**document, "kid": kid, **extra}


class ManualClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def jwks_server() -> Iterator[JwksServer]:
    with JwksServer() as server:
        yield server


def _jwks_verifier(
    url: str, clock: ManualClock, algorithm: str = "RS256"
) -> tuple[TokenVerifier, JwksKeys]:
    settings = Settings(jwt_algorithm=algorithm, jwt_jwks_url=url)  # type: ignore[arg-type]
    keys = JwksKeys(
        url, algorithm, cache_seconds=300, min_refresh_seconds=30, timeout_seconds=2, clock=clock
    )
    return TokenVerifier(settings, jwks=keys), keys


def _signed(
    key: Any, kid: str | None, algorithm: str = "RS256", subject: uuid.UUID | None = None
) -> str:
    headers = {"kid": kid} if kid is not None else {}
    return jwt.encode(_claims(subject or uuid.uuid4()), key, algorithm, headers=headers)


def test_jwks_keys_are_fetched_once_and_cached(jwks_server: JwksServer) -> None:
    jwks_server.keys = [jwk(RSA_KEY, "k1")]
    verifier, _ = _jwks_verifier(jwks_server.url, ManualClock())
    user = uuid.uuid4()
    for _ in range(5):
        assert _authenticate(verifier, _signed(RSA_KEY, "k1", subject=user)).user_id == user
    assert jwks_server.fetches == 1


def test_rotated_key_is_fetched_on_unknown_kid_at_a_bounded_rate(jwks_server: JwksServer) -> None:
    clock = ManualClock()
    jwks_server.keys = [jwk(RSA_KEY, "k1")]
    verifier, _ = _jwks_verifier(jwks_server.url, clock)
    _authenticate(verifier, _signed(RSA_KEY, "k1"))

    # The issuer rotates to k2; the first k2 token after the interval triggers one refetch.
    jwks_server.keys = [jwk(RSA_KEY, "k1"), jwk(OTHER_RSA_KEY, "k2")]
    clock.now += 31
    _authenticate(verifier, _signed(OTHER_RSA_KEY, "k2"))
    assert jwks_server.fetches == 2

    # A flood of made-up kids within the interval costs no fetch at all.
    for _ in range(20):
        _rejects(verifier, _signed(RSA_KEY, uuid.uuid4().hex), "key id")
    assert jwks_server.fetches == 2
    clock.now += 31
    _rejects(verifier, _signed(RSA_KEY, "made-up"), "key id")
    assert jwks_server.fetches == 3


def test_stale_keys_are_refreshed_in_the_background(jwks_server: JwksServer) -> None:
    clock = ManualClock()
    jwks_server.keys = [jwk(RSA_KEY, "k1")]
    verifier, keys = _jwks_verifier(jwks_server.url, clock)
    _authenticate(verifier, _signed(RSA_KEY, "k1"))
    clock.now += 301
    _authenticate(verifier, _signed(RSA_KEY, "k1"))  # answered from the cache at once
    eventually(
        lambda: keys.fetches == 2 and jwks_server.fetches == 2, what="the background refresh"
    )


def test_token_without_kid_is_rejected(jwks_server: JwksServer) -> None:
    jwks_server.keys = [jwk(RSA_KEY, "k1")]
    verifier, _ = _jwks_verifier(jwks_server.url, ManualClock())
    _rejects(verifier, _signed(RSA_KEY, None), "kid")


def test_jwks_keys_of_other_algorithms_are_ignored(jwks_server: JwksServer) -> None:
    secret = b"a-symmetric-key-that-should-never-be-in-a-jwks"
    jwks_server.keys = [
        {"kty": "oct", "k": _b64(secret), "kid": "sym"},
        jwk(RSA_KEY, "rsa"),
        jwk(EC_KEY, "ec"),
        jwk(EC_KEY, "enc", use="enc"),
    ]
    verifier, _ = _jwks_verifier(jwks_server.url, ManualClock(), algorithm="ES256")
    user = uuid.uuid4()
    assert _authenticate(verifier, _signed(EC_KEY, "ec", "ES256", user)).user_id == user
    _rejects(verifier, _signed(secret, "sym", "HS256"), "key id")
    _rejects(verifier, _signed(RSA_KEY, "rsa", "RS256"), "key id")
    _rejects(verifier, _signed(EC_KEY, "enc", "ES256"), "key id")
    _rejects(verifier, _signed(EC_KEY, "rsa", "ES256"), "key id")


def test_unreachable_jwks_is_unavailable_not_unauthorized() -> None:
    url = f"http://127.0.0.1:{free_port()}/jwks.json"
    verifier, _ = _jwks_verifier(url, ManualClock())
    with pytest.raises(AuthUnavailable):
        _authenticate(verifier, _signed(RSA_KEY, "k1"))


def test_a_remembered_token_is_refused_once_expired(monkeypatch: pytest.MonkeyPatch) -> None:
    verifier = TokenVerifier.from_settings(_hs256_settings(jwt_leeway_seconds=5))
    expires_at = int(time.time()) + 60
    token = jwt.encode(_claims(uuid.uuid4(), exp=expires_at), JWT_SECRET, "HS256")
    first = _authenticate(verifier, token)
    assert _authenticate(verifier, token) is first  # remembered, not decoded again
    monkeypatch.setattr("functions.auth.time.time", lambda: expires_at + 4.0)
    assert _authenticate(verifier, token) is first  # within the leeway
    monkeypatch.setattr("functions.auth.time.time", lambda: expires_at + 5.0)
    _rejects(verifier, token, "expired")


def test_a_refused_token_is_checked_again_each_time(hs256: TokenVerifier) -> None:
    token = jwt.encode(_claims(uuid.uuid4()), "t" * 32, "HS256")
    for _ in range(2):
        _rejects(hs256, token, "invalid token")


def test_a_remembered_token_stops_passing_when_its_key_leaves_the_jwks(
    jwks_server: JwksServer,
) -> None:
    clock = ManualClock()
    jwks_server.keys = [jwk(RSA_KEY, "k1")]
    verifier, keys = _jwks_verifier(jwks_server.url, clock)
    user = uuid.uuid4()
    token = _signed(RSA_KEY, "k1", subject=user)
    assert _authenticate(verifier, token).user_id == user
    jwks_server.keys = [jwk(OTHER_RSA_KEY, "k1")]  # same kid, new key: the old one is revoked
    clock.now += 31
    keys.refresh()
    _rejects(verifier, token, "invalid token")


def test_make_token_command_issues_a_token_the_api_accepts(hs256: TokenVerifier) -> None:
    # What `make token SUB=...` runs, with the secret given as the Makefile does.
    user = uuid.uuid4()
    result = subprocess.run(
        [sys.executable, "-m", "functions.auth", "token", "--sub", str(user)],
        env={**os.environ, "JWT_SECRET": JWT_SECRET, "JWT_ALGORITHM": "HS256"},
        capture_output=True,
        text=True,
        check=True,
        cwd=repo_root(),
    )
    principal = _authenticate(hs256, result.stdout.strip())
    assert principal == Principal(user, frozenset(DEV_PERMISSIONS))


def test_lifetime_is_bounded_and_iat_required_when_configured() -> None:
    verifier = TokenVerifier.from_settings(
        _hs256_settings(jwt_max_lifetime_seconds=3600, jwt_require_iat=True)
    )
    user = uuid.uuid4()
    now = int(time.time())
    assert _authenticate(verifier, jwt.encode(_claims(user, exp=now + 3000), JWT_SECRET)).user_id
    _rejects(verifier, jwt.encode(_claims(user, exp=now + 4000), JWT_SECRET), "lifetime")
    _rejects(verifier, jwt.encode(_claims(user, iat=None), JWT_SECRET), "iat")
    _rejects(verifier, jwt.encode(_claims(user, iat=float(now)), JWT_SECRET), "iat")
    _rejects(verifier, jwt.encode(_claims(user, exp=True), JWT_SECRET), "exp")
