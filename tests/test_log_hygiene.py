"""Nothing sensitive in logs: no tokens and no request bodies, at any level."""

from __future__ import annotations

import logging
import uuid
from datetime import timedelta

import pytest
from localkafka import free_port
from support import ingest_client, make_token

from clickhouse.store import ViewStore
from functions.logs import EcsFormatter
from functions.settings import Settings

SECRET_MARKER = "body-secret-7d1c"


def test_tokens_and_bodies_are_never_logged(
    settings: Settings, store: ViewStore, caplog: pytest.LogCaptureFixture
) -> None:
    user = uuid.uuid4()
    good = make_token(user)
    forged = make_token(user, secret="another-secret-that-is-long-enough-to-sign")
    expired = make_token(user, expires_in=timedelta(hours=-1))
    bodies = [
        b'{"movie_id": "' + SECRET_MARKER.encode() + b'", "movie_time_offset": 1}',
        b'{"' + SECRET_MARKER.encode() + b'": 1}',
        b'{"events": [{"note": "' + SECRET_MARKER.encode() + b'"}]}',
        b"{" + SECRET_MARKER.encode(),
    ]
    # A broker nobody listens on makes the API log its 503 path too.
    nowhere = settings.model_copy(
        update={
            "kafka_bootstrap_servers": f"127.0.0.1:{free_port()}",
            "kafka_delivery_timeout_ms": 500,
        }
    )
    caplog.set_level(logging.DEBUG)
    for configured in (settings, nowhere):
        with ingest_client(configured, store) as client:
            for token in (good, forged, expired):
                for route in ("/v1/views", "/v1/views:batch"):
                    for body in bodies:
                        client.post(
                            route,
                            content=body,
                            headers={
                                "Authorization": f"Bearer {token}",
                                "content-type": "application/json",
                            },
                        )
            valid = f'{{"movie_id": "{uuid.uuid4()}", "movie_time_offset": 1}}'
            client.post(
                "/v1/views",
                content=valid,
                headers={"Authorization": f"Bearer {good}", "content-type": "application/json"},
            )
    assert any(r.levelno >= logging.WARNING for r in caplog.records), "the 503 path was not hit"
    formatter = EcsFormatter("test")
    logged = "\n".join(formatter.format(record) for record in caplog.records)
    for secret in (good, forged, expired, good.split(".")[2], SECRET_MARKER):
        assert secret not in logged
