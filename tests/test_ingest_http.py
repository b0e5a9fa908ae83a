"""The HTTP contract of the ingest function, against the real broker."""

from __future__ import annotations

import time
import uuid
from datetime import UTC, datetime, timedelta

import orjson
from starlette.testclient import TestClient
from support import bearer, consume_all, ingest_client, make_token, seed_body

from clickhouse.store import ViewStore
from functions.events import ViewRecord
from functions.settings import Settings

PROBLEM = "application/problem+json"


def test_accepted_view_is_in_kafka_keyed_by_user(api: TestClient, settings: Settings) -> None:
    user, movie = uuid.uuid4(), uuid.uuid4()
    event_time = datetime.now(UTC).replace(microsecond=250000) - timedelta(hours=1)
    response = api.post(
        "/v1/views",
        json={
            "movie_id": str(movie),
            "movie_time_offset": 61_000,
            "event_time": event_time.isoformat(),
        },
        headers=bearer(user),
    )
    assert response.status_code == 202
    body = response.json()
    assert body["status"] == "accepted"

    [message] = consume_all(settings.kafka_bootstrap_servers, settings.views_topic, 1)
    assert message.key() == str(user).encode()
    record = ViewRecord.model_validate_json(message.value())
    assert record.event_id == uuid.UUID(body["event_id"])
    assert (record.user_id, record.movie_id, record.movie_time_offset) == (user, movie, 61_000)
    assert record.event_time == event_time
    assert record.schema_version == 1
    assert abs(record.received_at - datetime.now(UTC)) < timedelta(minutes=1)


def test_defaults_and_client_event_id(api: TestClient, settings: Settings) -> None:
    user, event_id = uuid.uuid4(), uuid.uuid4()
    before = datetime.now(UTC)
    response = api.post(
        "/v1/views",
        json={
            "movie_id": str(uuid.uuid4()),
            "movie_time_offset": 0,
            "event_id": str(event_id),
            "user_id": str(user),
        },
        headers=bearer(user),
    )
    assert response.status_code == 202
    assert response.json()["event_id"] == str(event_id)
    [message] = consume_all(settings.kafka_bootstrap_servers, settings.views_topic, 1)
    record = ViewRecord.model_validate_json(message.value())
    assert record.event_time == record.received_at  # defaults to the receive time
    assert record.event_time >= before


def test_seed_route_answers_like_the_seed_service(api: TestClient, settings: Settings) -> None:
    user, movie = uuid.uuid4(), uuid.uuid4()
    response = api.post(
        "/bigdata-api/v1/producer/views",
        json={
            "user_id": str(user),
            "movie_id": str(movie),
            "movie_time_offset": 1234,
            "created_at": "2021-01-01 10:00:00",
        },
        headers=bearer(user),
    )
    assert response.status_code == 201
    assert response.json() == {"message": "acknowledged", "status": "success"}
    [message] = consume_all(settings.kafka_bootstrap_servers, settings.views_topic, 1)
    record = ViewRecord.model_validate_json(message.value())
    assert (record.user_id, record.movie_id, record.movie_time_offset) == (user, movie, 1234)
    # created_at is replaced by the receive time, as in the seed service
    assert record.event_time == record.received_at
    assert record.event_time.year >= 2026


def _assert_problem(response: object, status: int) -> dict[str, object]:
    assert response.status_code == status, response.text  # type: ignore[attr-defined]
    assert response.headers["content-type"] == PROBLEM  # type: ignore[attr-defined]
    problem = response.json()  # type: ignore[attr-defined]
    assert problem["status"] == status
    assert problem["title"] and problem["detail"]
    return problem  # type: ignore[no-any-return]


def _with_token(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def _view_body(**overrides: object) -> dict[str, object]:
    return {"movie_id": str(uuid.uuid4()), "movie_time_offset": 5000, **overrides}


def test_malformed_json_is_400(api: TestClient) -> None:
    response = api.post(
        "/v1/views",
        content=b'{"movie_id": ',
        headers={**bearer(uuid.uuid4()), "content-type": "application/json"},
    )
    _assert_problem(response, 400)


def test_missing_token_is_401_with_challenge(api: TestClient) -> None:
    response = api.post("/v1/views", json=_view_body())
    _assert_problem(response, 401)
    assert response.headers["www-authenticate"].startswith("Bearer")


def test_badly_signed_token_is_401(api: TestClient) -> None:
    token = make_token(uuid.uuid4(), secret="some-other-secret-of-sufficient-length")
    response = api.post(
        "/v1/views", json=_view_body(), headers={"Authorization": f"Bearer {token}"}
    )
    _assert_problem(response, 401)
    assert 'error="invalid_token"' in response.headers["www-authenticate"]


def test_expired_token_is_401(api: TestClient) -> None:
    token = make_token(uuid.uuid4(), expires_in=timedelta(minutes=-10))
    response = api.post(
        "/v1/views", json=_view_body(), headers={"Authorization": f"Bearer {token}"}
    )
    problem = _assert_problem(response, 401)
    assert "expired" in str(problem["detail"])


def test_non_bearer_scheme_is_401(api: TestClient) -> None:
    response = api.post("/v1/views", json=_view_body(), headers={"Authorization": "Basic dXNlcg=="})
    _assert_problem(response, 401)


def test_other_viewers_user_id_is_403(api: TestClient) -> None:
    response = api.post(
        "/v1/views", json=_view_body(user_id=str(uuid.uuid4())), headers=bearer(uuid.uuid4())
    )
    _assert_problem(response, 403)


def test_schema_violations_are_422_naming_each_field(api: TestClient) -> None:
    response = api.post(
        "/v1/views",
        json={"movie_id": "not-a-uuid", "movie_time_offset": -1, "colour": "red"},
        headers=bearer(uuid.uuid4()),
    )
    problem = _assert_problem(response, 422)
    pointers = {error["pointer"] for error in problem["errors"]}  # type: ignore[attr-defined]
    assert pointers == {"#/movie_id", "#/movie_time_offset", "#/colour"}


def test_string_offset_is_not_coerced(api: TestClient) -> None:
    response = api.post(
        "/v1/views", json=_view_body(movie_time_offset="5000"), headers=bearer(uuid.uuid4())
    )
    problem = _assert_problem(response, 422)
    assert [e["pointer"] for e in problem["errors"]] == ["#/movie_time_offset"]  # type: ignore[attr-defined]


def test_missing_field_is_422(api: TestClient) -> None:
    response = api.post(
        "/v1/views", json={"movie_id": str(uuid.uuid4())}, headers=bearer(uuid.uuid4())
    )
    problem = _assert_problem(response, 422)
    assert [e["pointer"] for e in problem["errors"]] == ["#/movie_time_offset"]  # type: ignore[attr-defined]


def test_seed_route_errors(api: TestClient) -> None:
    user = uuid.uuid4()
    body = seed_body(user)
    route = "/bigdata-api/v1/producer/views"
    _assert_problem(api.post(route, json=body), 401)
    _assert_problem(api.post(route, json=body, headers=bearer(uuid.uuid4())), 403)
    _assert_problem(
        api.post(route, json={**body, "created_at": "yesterday"}, headers=bearer(user)), 422
    )
    _assert_problem(
        api.post(route, content=b"[", headers={**bearer(user), "content-type": "application/json"}),
        400,
    )


def test_unknown_route_and_wrong_method(api: TestClient) -> None:
    _assert_problem(api.get("/v2/nothing"), 404)
    response = api.get("/v1/views")
    _assert_problem(response, 405)
    assert response.headers["allow"] == "POST"


def test_position_of_unwatched_movie_is_404(api: TestClient) -> None:
    response = api.get(f"/v1/views/{uuid.uuid4()}/position", headers=bearer(uuid.uuid4()))
    _assert_problem(response, 404)
    _assert_problem(api.get("/v1/views/nope/position", headers=bearer(uuid.uuid4())), 422)
    _assert_problem(api.get(f"/v1/views/{uuid.uuid4()}/position"), 401)


def test_healthz(api: TestClient) -> None:
    assert api.get("/healthz").json() == {"status": "ok"}


def test_unacknowledged_event_is_503_with_retry_after_in_bounded_time(
    settings: Settings, store: ViewStore
) -> None:
    from localkafka import free_port

    nowhere = settings.model_copy(
        update={
            "kafka_bootstrap_servers": f"127.0.0.1:{free_port()}",
            "kafka_delivery_timeout_ms": 1000,
        }
    )
    with ingest_client(nowhere, store) as client:
        started = time.monotonic()
        response = client.post("/v1/views", json=_view_body(), headers=bearer(uuid.uuid4()))
        elapsed = time.monotonic() - started
    _assert_problem(response, 503)
    assert response.headers["retry-after"] == str(settings.retry_after_seconds)
    assert elapsed < 10


def test_response_bodies_are_json(api: TestClient) -> None:
    response = api.post("/v1/views", json=_view_body(), headers=bearer(uuid.uuid4()))
    assert response.headers["content-type"] == "application/json"
    orjson.loads(response.content)
