"""Verified tokens are remembered, but never past their expiry and never when they failed."""

from __future__ import annotations

import time
import uuid

import jwt
import pytest

from functions.auth import TokenVerifier
from functions.errors import AuthError

SECRET = "s" * 32


def _token(expires_at: float, secret: str = SECRET) -> str:
    return jwt.encode({"sub": str(uuid.uuid4()), "exp": int(expires_at)}, secret, "HS256")


def test_a_remembered_token_is_refused_once_expired(monkeypatch: pytest.MonkeyPatch) -> None:
    verifier = TokenVerifier("HS256", SECRET, leeway_seconds=5)
    expires_at = int(time.time()) + 60
    header = "Bearer " + _token(expires_at)
    first = verifier.verify(header)
    assert verifier.verify(header) is first  # from the cache
    monkeypatch.setattr("functions.auth.time.time", lambda: expires_at + 4.0)
    assert verifier.verify(header) is first  # within the leeway
    monkeypatch.setattr("functions.auth.time.time", lambda: expires_at + 5.0)
    with pytest.raises(AuthError, match="expired"):
        verifier.verify(header)


def test_a_refused_token_is_checked_again_each_time() -> None:
    verifier = TokenVerifier("HS256", SECRET, leeway_seconds=0)
    header = "Bearer " + _token(time.time() + 60, secret="t" * 32)
    for _ in range(2):
        with pytest.raises(AuthError, match="invalid token"):
            verifier.verify(header)
