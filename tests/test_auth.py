"""Local token verification with each configurable algorithm."""

from __future__ import annotations

import time
import uuid
from pathlib import Path

import jwt
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa

from functions.auth import TokenVerifier
from functions.errors import AuthError
from functions.settings import Settings


def _pem_pair(private_key: rsa.RSAPrivateKey | ec.EllipticCurvePrivateKey) -> tuple[bytes, bytes]:
    private = private_key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    public = private_key.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    return private, public


@pytest.mark.parametrize(
    ("algorithm", "private_key"),
    [
        ("RS256", rsa.generate_private_key(public_exponent=65537, key_size=2048)),
        ("ES256", ec.generate_private_key(ec.SECP256R1())),
    ],
)
def test_public_key_algorithms_from_settings(
    algorithm: str,
    private_key: rsa.RSAPrivateKey | ec.EllipticCurvePrivateKey,
    tmp_path: Path,
) -> None:
    private_pem, public_pem = _pem_pair(private_key)
    (tmp_path / "public.pem").write_bytes(public_pem)
    settings = Settings(jwt_algorithm=algorithm, jwt_public_key_file=tmp_path / "public.pem")
    verifier = TokenVerifier.from_settings(settings)
    user = uuid.uuid4()
    claims = {"sub": str(user), "exp": int(time.time()) + 60, "permissions": ["p"]}
    principal = verifier.verify("Bearer " + jwt.encode(claims, private_pem, algorithm=algorithm))
    assert principal.user_id == user
    assert principal.permissions == frozenset({"p"})
    # An HS256 token "signed" with the public key must not pass (key confusion).
    with pytest.raises(AuthError):
        verifier.verify("Bearer " + jwt.encode(claims, "x" * 32, algorithm="HS256"))


def test_settings_refuse_missing_key_material() -> None:
    with pytest.raises(ValueError, match="JWT_PUBLIC_KEY_FILE"):
        Settings(jwt_algorithm="RS256")
    with pytest.raises(ValueError, match="JWT_SECRET"):
        Settings(jwt_algorithm="HS256")


@pytest.mark.parametrize(
    "claims",
    [
        {"exp": int(time.time()) + 60},  # no subject
        {"sub": "not-a-uuid", "exp": int(time.time()) + 60},
        {"sub": str(uuid.uuid4())},  # no expiry
    ],
)
def test_required_claims(claims: dict[str, object]) -> None:
    verifier = TokenVerifier("HS256", "s" * 32, leeway_seconds=0)
    with pytest.raises(AuthError):
        verifier.verify("Bearer " + jwt.encode(claims, "s" * 32, algorithm="HS256"))
