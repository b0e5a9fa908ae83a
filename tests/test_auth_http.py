"""The authentication and authorization matrix as HTTP answers (docs/api.md), real broker."""

from __future__ import annotations

import uuid

import jwt
import pytest
from localkafka import free_port
from starlette.testclient import TestClient
from support import bearer, consume_all, ingest_client, make_token
from test_auth import RSA_KEY, JwksServer, jwk

from clickhouse.store import ViewStore
from functions.settings import Settings

PROBLEM = "application/problem+json"


def _view(**fields: object) -> dict[str, object]:
    return {"movie_id": str(uuid.uuid4()), "movie_time_offset": 1000, **fields}


def _problem(response: object, status: int) -> None:
    assert response.status_code == status, response.text  # type: ignore[attr-defined]
    assert response.headers["content-type"] == PROBLEM  # type: ignore[attr-defined]


def test_missing_token_challenges_without_error_code(api: TestClient) -> None:
    response = api.post("/v1/views", json=_view())
    _problem(response, 401)
    assert response.headers["www-authenticate"] == "Bearer"


@pytest.mark.parametrize(
    "route", ["/v1/views", "/v1/views:batch", "/bigdata-api/v1/producer/views"]
)
def test_invalid_token_is_401_invalid_token_on_every_write_route(
    api: TestClient, route: str
) -> None:
    response = api.post(route, json={}, headers={"Authorization": "Bearer not-a-token"})
    _problem(response, 401)
    assert response.headers["www-authenticate"] == 'Bearer error="invalid_token"'


def test_read_only_token_cannot_write(api: TestClient) -> None:
    user = uuid.uuid4()
    response = api.post(
        "/v1/views", json=_view(), headers=bearer(user, permissions=["ugc.views.read"])
    )
    _problem(response, 403)
    assert response.headers["www-authenticate"] == (
        'Bearer error="insufficient_scope", scope="ugc.views.write"'
    )


def test_write_only_token_cannot_read(api: TestClient) -> None:
    headers = bearer(uuid.uuid4(), permissions=["ugc.views.write"])
    _problem(api.get(f"/v1/views/{uuid.uuid4()}/position", headers=headers), 403)
    _problem(api.get("/v1/movies/most-watched", headers=headers), 403)


def test_token_without_permissions_claim_cannot_do_anything(api: TestClient) -> None:
    headers = bearer(uuid.uuid4(), permissions=None)
    _problem(api.post("/v1/views", json=_view(), headers=headers), 403)
    _problem(api.get("/v1/movies/most-watched", headers=headers), 403)


def test_forbidden_caller_body_is_not_read(api: TestClient) -> None:
    # A caller without the permission gets 403 even for a body that would be 413 or 415.
    headers = {**bearer(uuid.uuid4(), permissions=[]), "content-type": "text/plain"}
    _problem(api.post("/v1/views", content=b"x" * 100_000, headers=headers), 403)


def test_other_viewers_user_id_is_403_everywhere(api: TestClient) -> None:
    user, other = uuid.uuid4(), uuid.uuid4()
    _problem(api.post("/v1/views", json=_view(user_id=str(other)), headers=bearer(user)), 403)
    batch = api.post(
        "/v1/views:batch",
        json={"events": [_view(user_id=str(other)), _view(user_id=str(user))]},
        headers=bearer(user),
    )
    assert batch.status_code == 207
    assert [item["status"] for item in batch.json()["items"]] == ["rejected", "accepted"]
    assert batch.json()["items"][0]["problem"]["status"] == 403


def test_rs256_tokens_from_a_jwks_url(settings: Settings, store: ViewStore) -> None:
    with JwksServer() as jwks:
        jwks.keys = [jwk(RSA_KEY, "key-2026")]
        configured = settings.model_copy(
            update={"jwt_algorithm": "RS256", "jwt_secret": None, "jwt_jwks_url": jwks.url}
        )
        user = uuid.uuid4()
        now_claims = jwt.decode(make_token(user), options={"verify_signature": False})
        token = jwt.encode(now_claims, RSA_KEY, "RS256", headers={"kid": "key-2026"})
        with ingest_client(configured, store) as client:
            accepted = client.post(
                "/v1/views", json=_view(), headers={"Authorization": f"Bearer {token}"}
            )
            assert accepted.status_code == 202, accepted.text
            hs256 = client.post("/v1/views", json=_view(), headers=bearer(user))
            _problem(hs256, 401)
    [message] = consume_all(settings.kafka_bootstrap_servers, settings.views_topic, 1)
    assert message.key() == str(user).encode()


def test_unreachable_jwks_is_503_with_retry_after(settings: Settings, store: ViewStore) -> None:
    configured = settings.model_copy(
        update={
            "jwt_algorithm": "RS256",
            "jwt_secret": None,
            "jwt_jwks_url": f"http://127.0.0.1:{free_port()}/jwks.json",
        }
    )
    token = jwt.encode(
        {"sub": str(uuid.uuid4()), "exp": 2**40}, RSA_KEY, "RS256", headers={"kid": "k"}
    )
    with ingest_client(configured, store) as client:
        response = client.post(
            "/v1/views", json=_view(), headers={"Authorization": f"Bearer {token}"}
        )
    _problem(response, 503)
    assert response.headers["retry-after"] == str(settings.retry_after_seconds)


def test_disabled_auth_takes_the_viewer_from_the_body(settings: Settings, store: ViewStore) -> None:
    user = uuid.uuid4()
    with ingest_client(
        settings.model_copy(update={"auth_disabled_insecure": True}), store
    ) as client:
        assert client.post("/v1/views", json=_view(user_id=str(user))).status_code == 202
        _problem(client.post("/v1/views", json=_view()), 403)
    [message] = consume_all(settings.kafka_bootstrap_servers, settings.views_topic, 1)
    assert message.key() == str(user).encode()
