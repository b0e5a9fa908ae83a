"""The HTTP contract of the ingest function against the real broker: what is accepted ends up
in Kafka; strict input (media type, size, JSON, schema bounds, the batch endpoint); tokens;
every error a problem document."""

from __future__ import annotations

import time
import uuid
from datetime import UTC, datetime, timedelta
from typing import Any

import orjson
import pytest
from localkafka import free_port
from starlette.testclient import TestClient
from support import bearer, consume_all, ingest_client, make_token, seed_body

from clickhouse.store import ViewStore
from functions.events import ViewRecord
from functions.settings import Settings

PROBLEM = "application/problem+json"


def _problem(response: Any, status: int) -> dict[str, Any]:
    assert response.status_code == status, response.text
    assert response.headers["content-type"] == PROBLEM
    document: dict[str, Any] = response.json()
    assert document["status"] == status and document["title"] and document["detail"]
    return document


def _pointers(problem: dict[str, Any]) -> list[str]:
    return [error["pointer"] for error in problem["errors"]]


def _view(**fields: object) -> dict[str, object]:
    return {"movie_id": str(uuid.uuid4()), "movie_time_offset": 1000, **fields}


def _post(api: TestClient, body: bytes, route: str = "/v1/views", **headers: str) -> Any:
    return api.post(
        route,
        content=body,
        headers={**bearer(uuid.uuid4()), "content-type": "application/json", **headers},
    )


@pytest.mark.parametrize(
    "content_type",
    ["", "text/plain", "application/x-www-form-urlencoded", "application/json; charset=latin-1"],
)
def test_non_json_media_type_is_415(api: TestClient, content_type: str) -> None:
    _problem(_post(api, orjson.dumps(_view()), **{"content-type": content_type}), 415)


def test_json_with_utf8_charset_is_fine(api: TestClient) -> None:
    response = _post(
        api, orjson.dumps(_view()), **{"content-type": "Application/JSON; charset=UTF-8"}
    )
    assert response.status_code == 202


def test_oversized_body_is_413_by_declared_length(api: TestClient, settings: Settings) -> None:
    body = b" " * (settings.max_view_body_bytes + 1)
    _problem(_post(api, body), 413)


def test_oversized_body_is_413_without_declared_length(api: TestClient, settings: Settings) -> None:
    # A chunked upload has no Content-Length: the limit is enforced while reading.
    chunk = b" " * 16_384
    chunks = iter([chunk] * (settings.max_view_body_bytes // len(chunk) + 2))
    response = api.post(
        "/v1/views",
        content=chunks,
        headers={**bearer(uuid.uuid4()), "content-type": "application/json"},
    )
    _problem(response, 413)


def test_body_in_several_chunks_is_read_whole(api: TestClient, settings: Settings) -> None:
    user = uuid.uuid4()
    view = orjson.dumps(_view(movie_time_offset=4242))
    response = api.post(
        "/v1/views",
        content=iter([view[:7], view[7:30], view[30:]]),
        headers={**bearer(user), "content-type": "application/json"},
    )
    assert response.status_code == 202, response.text
    [message] = consume_all(settings.kafka_bootstrap_servers, settings.views_topic, 1)
    record = ViewRecord.model_validate_json(message.value())
    assert (record.user_id, record.movie_time_offset) == (user, 4242)


def test_batch_has_its_own_larger_limit(api: TestClient, settings: Settings) -> None:
    padding = " " * (settings.max_view_body_bytes + 10)
    body = f'{{"events": [{orjson.dumps(_view()).decode()}]{padding}}}'.encode()
    assert _post(api, body, "/v1/views:batch").status_code == 202
    _problem(_post(api, b" " * (settings.max_batch_body_bytes + 1), "/v1/views:batch"), 413)


@pytest.mark.parametrize(
    "body",
    [
        b"",
        b"{",
        b"\xff\xfe{}",  # not UTF-8
        b'{"movie_id": "\xc3\x28"}',  # invalid UTF-8 inside a string
        b"[" * 5000 + b"]" * 5000,  # deep nesting
        b'{"a":' * 2000 + b"1" + b"}" * 2000,
        b'{"movie_time_offset": ' + b"9" * 5000 + b"}",  # too long to be a number in Python
    ],
    ids=[
        "empty",
        "truncated",
        "bom-latin",
        "bad-utf8",
        "deep-array",
        "deep-object",
        "long-number",
    ],
)
def test_malformed_json_is_400(api: TestClient, body: bytes) -> None:
    _problem(_post(api, body), 400)


def test_huge_json_under_the_limit_is_422_with_a_bounded_answer(api: TestClient) -> None:
    many_keys = {f"k{i}": i for i in range(5000)}  # ~60 KB of unknown fields
    problem = _problem(_post(api, orjson.dumps({**_view(), **many_keys})), 422)
    assert len(problem["errors"]) == 100
    assert "5000 errors" in problem["detail"]


@pytest.mark.parametrize(
    ("fields", "pointer"),
    [
        ({"movie_time_offset": -1}, "#/movie_time_offset"),
        ({"movie_time_offset": 48 * 3600 * 1000 + 1}, "#/movie_time_offset"),
        ({"movie_time_offset": 1.0}, "#/movie_time_offset"),
        ({"movie_time_offset": "1000"}, "#/movie_time_offset"),
        ({"movie_time_offset": True}, "#/movie_time_offset"),
        ({"movie_id": uuid.uuid4().hex}, "#/movie_id"),
        ({"movie_id": f"urn:uuid:{uuid.uuid4()}"}, "#/movie_id"),
        ({"movie_id": f"{{{uuid.uuid4()}}}"}, "#/movie_id"),
        ({"event_id": 12345}, "#/event_id"),
        ({"event_time": "2026-01-01T00:00:00"}, "#/event_time"),  # no offset
        ({"event_time": 1767225600}, "#/event_time"),  # no epoch numbers
        ({"event_time": "9999-12-31T23:59:59Z"}, "#/event_time"),
        ({"event_time": "0001-01-01T00:00:00+01:00"}, "#/event_time"),
        ({"colour": "red"}, "#/colour"),
    ],
)
def test_schema_violations_are_422_at_the_field(
    api: TestClient, fields: dict[str, object], pointer: str
) -> None:
    assert _pointers(_problem(_post(api, orjson.dumps(_view(**fields))), 422)) == [pointer]


@pytest.mark.parametrize(
    "number", [b"1" + b"0" * 30, b"-" + b"9" * 400, b"NaN", b"Infinity", b"1e400"]
)
def test_huge_and_non_finite_numbers_are_422(api: TestClient, number: bytes) -> None:
    # Python's parser takes these, but no field accepts a float or an integer of this size.
    body = b'{"movie_id": "%s", "movie_time_offset": %s}' % (str(uuid.uuid4()).encode(), number)
    assert _pointers(_problem(_post(api, body), 422)) == ["#/movie_time_offset"]


def test_uppercase_canonical_uuid_is_accepted_and_written_lower_case(
    api: TestClient, settings: Settings
) -> None:
    movie, event_id = uuid.uuid4(), uuid.uuid4()
    body = _view(movie_id=str(movie).upper(), event_id=str(event_id).upper())
    response = _post(api, orjson.dumps(body))
    assert response.status_code == 202
    assert response.json()["event_id"] == str(event_id)
    # Lower case is the form the sink's ClickHouse-checked fast path expects.
    [message] = consume_all(settings.kafka_bootstrap_servers, settings.views_topic, 1)
    value = orjson.loads(message.value())
    assert (value["movie_id"], value["event_id"]) == (str(movie), str(event_id))


def _iso(moment: datetime) -> str:
    return moment.isoformat()


def test_event_time_window(api: TestClient, settings: Settings) -> None:
    now = datetime.now(UTC)
    skew = timedelta(seconds=settings.max_event_time_skew_seconds)
    age = timedelta(seconds=settings.max_event_age_seconds)
    far_future = _post(api, orjson.dumps(_view(event_time=_iso(now + skew + timedelta(minutes=5)))))
    assert "after the receive time" in _problem(far_future, 422)["errors"][0]["detail"]
    too_old = _post(api, orjson.dumps(_view(event_time=_iso(now - age - timedelta(hours=1)))))
    assert "before the receive time" in _problem(too_old, 422)["errors"][0]["detail"]
    for moment in (now + skew / 2, now - age / 2):
        assert _post(api, orjson.dumps(_view(event_time=_iso(moment)))).status_code == 202


def test_configured_offset_bound(settings: Settings, store: ViewStore) -> None:
    narrow = settings.model_copy(update={"max_movie_time_offset_ms": 1000})
    with ingest_client(narrow, store) as client:
        assert _post(client, orjson.dumps(_view(movie_time_offset=1000))).status_code == 202
        _problem(_post(client, orjson.dumps(_view(movie_time_offset=1001))), 422)


def test_many_failures_are_all_listed(api: TestClient) -> None:
    body = {"movie_id": "x", "movie_time_offset": -5, "event_time": "yesterday", "extra": 1}
    assert sorted(_pointers(_problem(_post(api, orjson.dumps(body)), 422))) == [
        "#/event_time",
        "#/extra",
        "#/movie_id",
        "#/movie_time_offset",
    ]


# --- batch ---------------------------------------------------------------------------------------


def test_batch_all_accepted_is_202_and_in_kafka(api: TestClient, settings: Settings) -> None:
    user = uuid.uuid4()
    events = [_view(movie_time_offset=offset) for offset in (1, 2, 3)]
    response = api.post("/v1/views:batch", json={"events": events}, headers=bearer(user))
    assert response.status_code == 202
    outcome = response.json()
    assert (outcome["accepted"], outcome["rejected"]) == (3, 0)
    ids = {item["event_id"] for item in outcome["items"]}
    messages = consume_all(settings.kafka_bootstrap_servers, settings.views_topic, 3)
    records = [ViewRecord.model_validate_json(m.value()) for m in messages]
    assert {str(r.event_id) for r in records} == ids
    assert {r.user_id for r in records} == {user}
    assert sorted(r.movie_time_offset for r in records) == [1, 2, 3]


def test_batch_judges_each_event_alone(api: TestClient, settings: Settings) -> None:
    events: list[object] = [
        _view(movie_time_offset=7),
        _view(movie_time_offset=-1),
        "not an object",
        _view(movie_id="nope", colour="red"),
        _view(movie_time_offset=8),
    ]
    response = api.post("/v1/views:batch", json={"events": events}, headers=bearer(uuid.uuid4()))
    assert response.status_code == 207
    outcome = response.json()
    assert (outcome["accepted"], outcome["rejected"]) == (2, 3)
    statuses = [item["status"] for item in outcome["items"]]
    assert statuses == ["accepted", "rejected", "rejected", "rejected", "accepted"]
    problems = [item["problem"] for item in outcome["items"] if item["status"] == "rejected"]
    assert [p["status"] for p in problems] == [422, 422, 422]
    assert _pointers(problems[0]) == ["#/events/1/movie_time_offset"]
    assert _pointers(problems[1]) == ["#/events/2"]
    assert sorted(_pointers(problems[2])) == ["#/events/3/colour", "#/events/3/movie_id"]
    messages = consume_all(settings.kafka_bootstrap_servers, settings.views_topic, 2)
    offsets = sorted(ViewRecord.model_validate_json(m.value()).movie_time_offset for m in messages)
    assert offsets == [7, 8]


@pytest.mark.parametrize(
    ("body", "status", "pointer"),
    [
        ({"events": []}, 422, "#/events"),
        ({}, 422, "#/events"),
        ({"events": {}}, 422, "#/events"),
        ({"events": [], "more": 1}, 422, "#/events"),
        ([], 422, "#"),
    ],
)
def test_batch_envelope_errors_reject_the_whole(
    api: TestClient, body: object, status: int, pointer: str
) -> None:
    response = api.post("/v1/views:batch", json=body, headers=bearer(uuid.uuid4()))
    assert pointer in _pointers(_problem(response, status))


def test_batch_size_is_bounded(settings: Settings, store: ViewStore) -> None:
    small = settings.model_copy(update={"max_batch_events": 3})
    with ingest_client(small, store) as client:
        events = [_view() for _ in range(4)]
        response = client.post(
            "/v1/views:batch", json={"events": events}, headers=bearer(uuid.uuid4())
        )
        assert _pointers(_problem(response, 422)) == ["#/events"]


def test_seed_route_is_as_strict(api: TestClient) -> None:
    user = uuid.uuid4()
    body = seed_body(user)
    route = "/bigdata-api/v1/producer/views"
    headers = {**bearer(user), "content-type": "text/plain"}
    _problem(api.post(route, content=orjson.dumps(body), headers=headers), 415)
    bad = {**body, "movie_id": uuid.uuid4().hex, "movie_time_offset": "10"}
    problem = _problem(api.post(route, json=bad, headers=bearer(user)), 422)
    assert sorted(_pointers(problem)) == ["#/movie_id", "#/movie_time_offset"]


def test_query_and_path_parameters_are_validated(api: TestClient) -> None:
    headers = bearer(uuid.uuid4())
    for limit in ("0", "1001", "ten", ""):
        problem = _problem(api.get(f"/v1/movies/most-watched?limit={limit}", headers=headers), 422)
        assert _pointers(problem) == ["#/query/limit"]
    problem = _problem(api.get(f"/v1/views/{uuid.uuid4().hex}/position", headers=headers), 422)
    assert _pointers(problem) == ["#/path/movie_id"]


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


def _with_token(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def test_missing_token_is_401_with_challenge(api: TestClient) -> None:
    response = api.post("/v1/views", json=_view())
    _problem(response, 401)
    assert response.headers["www-authenticate"].startswith("Bearer")


def test_badly_signed_token_is_401(api: TestClient) -> None:
    token = make_token(uuid.uuid4(), secret="some-other-secret-of-sufficient-length")
    response = api.post("/v1/views", json=_view(), headers={"Authorization": f"Bearer {token}"})
    _problem(response, 401)
    assert 'error="invalid_token"' in response.headers["www-authenticate"]


def test_expired_token_is_401(api: TestClient) -> None:
    token = make_token(uuid.uuid4(), expires_in=timedelta(minutes=-10))
    response = api.post("/v1/views", json=_view(), headers={"Authorization": f"Bearer {token}"})
    problem = _problem(response, 401)
    assert "expired" in str(problem["detail"])


def test_non_bearer_scheme_is_401(api: TestClient) -> None:
    response = api.post("/v1/views", json=_view(), headers={"Authorization": "Basic dXNlcg=="})
    _problem(response, 401)


def test_other_viewers_user_id_is_403(api: TestClient) -> None:
    response = api.post(
        "/v1/views", json=_view(user_id=str(uuid.uuid4())), headers=bearer(uuid.uuid4())
    )
    _problem(response, 403)


def test_schema_violations_are_422_naming_each_field(api: TestClient) -> None:
    response = api.post(
        "/v1/views",
        json={"movie_id": "not-a-uuid", "movie_time_offset": -1, "colour": "red"},
        headers=bearer(uuid.uuid4()),
    )
    problem = _problem(response, 422)
    pointers = {error["pointer"] for error in problem["errors"]}  # type: ignore[attr-defined]
    assert pointers == {"#/movie_id", "#/movie_time_offset", "#/colour"}


def test_string_offset_is_not_coerced(api: TestClient) -> None:
    response = api.post(
        "/v1/views", json=_view(movie_time_offset="5000"), headers=bearer(uuid.uuid4())
    )
    problem = _problem(response, 422)
    assert [e["pointer"] for e in problem["errors"]] == ["#/movie_time_offset"]  # type: ignore[attr-defined]


def test_missing_field_is_422(api: TestClient) -> None:
    response = api.post(
        "/v1/views", json={"movie_id": str(uuid.uuid4())}, headers=bearer(uuid.uuid4())
    )
    problem = _problem(response, 422)
    assert [e["pointer"] for e in problem["errors"]] == ["#/movie_time_offset"]  # type: ignore[attr-defined]


def test_seed_route_errors(api: TestClient) -> None:
    user = uuid.uuid4()
    body = seed_body(user)
    route = "/bigdata-api/v1/producer/views"
    _problem(api.post(route, json=body), 401)
    _problem(api.post(route, json=body, headers=bearer(uuid.uuid4())), 403)
    _problem(api.post(route, json={**body, "created_at": "yesterday"}, headers=bearer(user)), 422)
    _problem(
        api.post(route, content=b"[", headers={**bearer(user), "content-type": "application/json"}),
        400,
    )


def test_unknown_route_and_wrong_method(api: TestClient) -> None:
    _problem(api.get("/v2/nothing"), 404)
    response = api.get("/v1/views")
    _problem(response, 405)
    assert response.headers["allow"] == "POST"


def test_forged_tokens_are_charged_to_the_address_and_probes_never(
    settings: Settings, store: ViewStore
) -> None:
    strict = settings.model_copy(update={"rate_limit_per_second": 0.001, "rate_limit_burst": 2})
    forged = {"Authorization": "Bearer not.a.token"}
    with ingest_client(strict, store) as client:
        answers = [client.get("/v1/movies/most-watched", headers=forged) for _ in range(3)]
        statuses = [answer.status_code for answer in answers]
        assert statuses == [401, 401, 429]
        assert client.get("/healthz").status_code == 200


def test_position_of_unwatched_movie_is_404(api: TestClient) -> None:
    response = api.get(f"/v1/views/{uuid.uuid4()}/position", headers=bearer(uuid.uuid4()))
    _problem(response, 404)
    _problem(api.get("/v1/views/nope/position", headers=bearer(uuid.uuid4())), 422)
    _problem(api.get(f"/v1/views/{uuid.uuid4()}/position"), 401)


def test_healthz(api: TestClient) -> None:
    assert api.get("/healthz").json() == {"status": "ok"}


def test_unacknowledged_event_is_503_with_retry_after_in_bounded_time(
    settings: Settings, store: ViewStore
) -> None:
    nowhere = settings.model_copy(
        update={
            "kafka_bootstrap_servers": f"127.0.0.1:{free_port()}",
            "kafka_delivery_timeout_ms": 1000,
        }
    )
    with ingest_client(nowhere, store) as client:
        started = time.monotonic()
        response = client.post("/v1/views", json=_view(), headers=bearer(uuid.uuid4()))
        elapsed = time.monotonic() - started
    _problem(response, 503)
    assert response.headers["retry-after"] == str(settings.retry_after_seconds)
    # The 1 s delivery timeout (plus the guard), not librdkafka's default of minutes; the bound is
    # loose so that a loaded machine cannot fail it.
    assert elapsed < 30


def test_response_bodies_are_json(api: TestClient) -> None:
    response = api.post("/v1/views", json=_view(), headers=bearer(uuid.uuid4()))
    assert response.headers["content-type"] == "application/json"
    body = orjson.loads(response.content)
    assert body == {"event_id": body["event_id"], "status": "accepted"}
    assert uuid.UUID(body["event_id"])
