"""Hostile clients against the running local host (``python -m functions.local``, real broker):
each probe of docs/security.md ends bounded (a status, a closed connection, memory that does not
grow with the attack, other viewers still served). Timing bounds are generous on purpose."""

from __future__ import annotations

import asyncio
import json
import os
import re
import resource
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path
from typing import Any

import httpx
import psutil
import pytest
from localkafka import LocalKafka, free_port
from support import JWT_SECRET, LocalHost, bearer, eventually, local_host, make_token, repo_root

# Short limits, so that the probes end quickly; the defaults are in docs/security.md.
REQUEST_TIMEOUT_SECONDS = 2
KEEPALIVE_SECONDS = 3
RATE_PER_SECOND = 20
BURST = 40
# The server runs with this file limit: its connection cap must answer 503 below it.
FILE_LIMIT = 1024
MAX_HEADER_BYTES = 16_384
PATIENCE = 30  # seconds any single probe may take on a loaded machine


def _rss(host: LocalHost) -> int:
    return int(psutil.Process(host.pid).memory_info().rss)


def _limit_files() -> None:
    resource.setrlimit(resource.RLIMIT_NOFILE, (FILE_LIMIT, FILE_LIMIT))


@pytest.fixture(scope="module")
def host(kafka: LocalKafka, tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalHost]:
    with local_host(
        kafka,
        tmp_path_factory.mktemp("hostile"),
        preexec_fn=_limit_files,
        LOG_LEVEL="DEBUG",
        HTTP_REQUEST_TIMEOUT_SECONDS=str(REQUEST_TIMEOUT_SECONDS),
        HTTP_KEEPALIVE_SECONDS=str(KEEPALIVE_SECONDS),
        RATE_LIMIT_PER_SECOND=str(RATE_PER_SECOND),
        RATE_LIMIT_BURST=str(BURST),
    ) as running:
        yield running


def _connect(host: LocalHost) -> socket.socket:
    return socket.create_connection(("127.0.0.1", host.port), timeout=PATIENCE)


def _send_until_refused(sock: socket.socket, data: bytes, chunk: int = 65_536) -> int:
    """Bytes the server took before it closed the connection (all of them if it never did)."""
    sent = 0
    try:
        while sent < len(data):
            sent += sock.send(data[sent : sent + chunk])
    except OSError:
        pass
    return sent


def _answer(sock: socket.socket) -> bytes:
    """Everything the server writes until it closes the connection (b"" on a reset)."""
    received = b""
    try:
        while chunk := sock.recv(65_536):
            received += chunk
    except OSError:
        pass
    return received


def _status(raw: bytes) -> int:
    return int(raw.split(b" ", 2)[1])


def _head(raw: bytes) -> str:
    return raw.partition(b"\r\n\r\n")[0].decode().lower()


def _request_head(path: str = "/v1/views", method: str = "POST", extra: str = "") -> bytes:
    return f"{method} {path} HTTP/1.1\r\nHost: probe\r\n{extra}".encode()


def _authorized_post_head(content_length: int) -> bytes:
    """The head of a viewer's POST /v1/views announcing a ``content_length``-byte body."""
    return _request_head(
        extra=f"Authorization: Bearer {make_token(uuid.uuid4())}\r\n"
        f"Content-Type: application/json\r\nContent-Length: {content_length}\r\n\r\n"
    )


def _viewer_is_served(host: LocalHost) -> None:
    viewer = uuid.uuid4()
    answer = httpx.post(
        f"{host.base}/v1/views",
        json={"movie_id": str(uuid.uuid4()), "movie_time_offset": 1_000},
        headers=bearer(viewer),
        timeout=PATIENCE,
    )
    assert answer.status_code == 202, answer.text


def test_headers_over_the_budget_get_431_and_the_connection_closes(host: LocalHost) -> None:
    with _connect(host) as sock:
        sock.sendall(_request_head(extra="X-Padding: " + "a" * 20_000))  # unfinished
        raw = _answer(sock)
    assert _status(raw) == 431
    assert "connection: close" in _head(raw)
    assert "x-content-type-options: nosniff" in _head(raw)
    assert b'"status":431' in raw


def test_a_refused_request_is_a_debug_line_with_its_status_and_client(host: LocalHost) -> None:
    with _connect(host) as sock:
        sock.sendall(_request_head(extra="X-Padding: " + "a" * 20_000))
        client_port = sock.getsockname()[1]
        assert _status(_answer(sock)) == 431

    def refusal() -> dict[str, Any] | None:
        for raw in host.log.read_text().splitlines():
            if raw.startswith("{") and '"request refused"' in raw:
                line: dict[str, Any] = json.loads(raw)
                if line["client"]["port"] == client_port:
                    return line
        return None

    line = eventually(refusal, timeout=PATIENCE, what="the refusal's log line")
    assert line["log.level"] == "debug"
    assert line["http"]["response"]["status_code"] == 431
    assert line["client"]["address"] == "127.0.0.1"


def test_a_head_within_the_budget_and_its_body_in_one_write_is_served(host: LocalHost) -> None:
    # One write, larger than the header budget: the bytes after the head are body, not head.
    body = b'{"movie_id": "%s", "padding": "%s"}' % (str(uuid.uuid4()).encode(), b"a" * 60_000)
    head = _authorized_post_head(content_length=len(body)).replace(
        b"\r\n\r\n", b"\r\nX-Padding: " + b"a" * 10_000 + b"\r\n\r\n"
    )
    assert len(head) < MAX_HEADER_BYTES < len(head + body)
    with _connect(host) as sock:
        sock.sendall(head + body)
        raw = sock.recv(65_536)
    assert _status(raw) == 422, raw  # the unknown field, judged by the app


@pytest.mark.parametrize(
    "attack",
    [
        pytest.param(_request_head(extra="X-Big: " + "a" * 100_000 + "\r\n\r\n"), id="100 KB"),
        pytest.param(_request_head(extra="X-Big: " + "a" * 10_000_000 + "\r\n\r\n"), id="10 MB"),
        pytest.param(_request_head(extra="X-A: b\r\n" * 200_000 + "\r\n"), id="200k headers"),
    ],
)
def test_no_oversized_head_reaches_the_app(host: LocalHost, attack: bytes) -> None:
    with _connect(host) as sock:
        sent = _send_until_refused(sock, attack)
        raw = _answer(sock)
    # Either the 431 was read, or the server closed while the rest was still being sent.
    assert (raw and _status(raw) == 431) or sent < len(attack)


def test_unfinished_headers_cost_at_most_the_budget_per_connection(host: LocalHost) -> None:
    before = _rss(host)
    connections = [_connect(host) for _ in range(30)]
    try:
        taken = [
            _send_until_refused(sock, _request_head() + b"X-A: " + b"a" * 20_000_000)
            for sock in connections
        ]
        assert all(sent < 20_000_000 for sent in taken), "a 20 MB header was read to its end"
        grown = _rss(host) - before
    finally:
        for sock in connections:
            sock.close()
    # Without the budget: 30 x 20 MB held (the worker went from 494 MB to 1,241 MB).
    assert grown < 100 * 2**20, f"RSS grew by {grown / 2**20:.0f} MB"
    _viewer_is_served(host)


def test_an_oversized_authorization_is_refused_before_decoding(host: LocalHost) -> None:
    token = "Bearer " + "x" * 9_000
    answer = httpx.post(
        f"{host.base}/v1/views",
        json={"movie_id": str(uuid.uuid4()), "movie_time_offset": 1_000},
        headers={"Authorization": token},
    )
    assert answer.status_code == 401
    assert "8192" in answer.json()["detail"]


def test_slow_headers_get_408_and_close(host: LocalHost) -> None:
    started = time.monotonic()
    with _connect(host) as sock:
        sock.sendall(_request_head() + b"X-Slow: 1\r\n")
        raw = _answer(sock)
    assert _status(raw) == 408, raw
    assert time.monotonic() - started < PATIENCE


def test_a_slow_body_gets_408_and_close_and_no_error(host: LocalHost) -> None:
    with _connect(host) as sock:
        sock.sendall(_authorized_post_head(content_length=100) + b"{")
        raw = _answer(sock)
    assert _status(raw) == 408, raw
    assert '"log.level":"error"' not in host.log.read_text()


def test_a_silent_connection_is_closed(host: LocalHost) -> None:
    started = time.monotonic()
    with _connect(host) as sock:
        assert _answer(sock) == b""
    assert time.monotonic() - started < PATIENCE


def test_client_abort_mid_body_is_logged_at_debug_not_an_error(host: LocalHost) -> None:
    head = _authorized_post_head(content_length=1000)
    for _ in range(5):
        with _connect(host) as sock:
            sock.sendall(head + b'{"movie_id": ')
    eventually(lambda: "client disconnected" in host.log.read_text(), timeout=PATIENCE)
    log = host.log.read_text()
    assert '"log.level":"error"' not in log
    assert "unhandled error" not in log
    _viewer_is_served(host)


def test_connections_beyond_the_cap_get_503_not_resets(host: LocalHost) -> None:
    # Kept-alive connections stay open after their answer: together they pass the cap. Each
    # asks at once: one left idle for KEEPALIVE_SECONDS (opening them all can take that long on
    # a loaded machine) is closed without an answer, as it should be.
    connections: list[socket.socket] = []
    try:
        for _ in range(FILE_LIMIT):
            connections.append(_connect(host))
            connections[-1].sendall(b"GET /healthz HTTP/1.1\r\nHost: probe\r\n\r\n")
        statuses = [_status(sock.recv(65_536)) for sock in connections]
    finally:
        for sock in connections:
            sock.close()
    assert set(statuses) <= {200, 503}, set(statuses)
    assert 503 in statuses
    eventually(lambda: httpx.get(f"{host.base}/healthz").status_code == 200, timeout=PATIENCE)


def test_one_viewer_flooding_gets_429_and_another_is_still_served(host: LocalHost) -> None:
    flooder = bearer(uuid.uuid4())
    body = {"movie_id": str(uuid.uuid4()), "movie_time_offset": 1_000}

    async def flood() -> list[httpx.Response]:
        async with httpx.AsyncClient(base_url=host.base, timeout=PATIENCE) as client:
            return await asyncio.gather(
                *(client.post("/v1/views", json=body, headers=flooder) for _ in range(BURST * 3))
            )

    answers = asyncio.run(flood())
    refused = [answer for answer in answers if answer.status_code == 429]
    assert refused, [answer.status_code for answer in answers]
    assert {answer.status_code for answer in answers} <= {202, 429}
    problem = refused[0]
    assert problem.headers["content-type"] == "application/problem+json"
    assert int(problem.headers["retry-after"]) >= 1
    _viewer_is_served(host)


@pytest.mark.parametrize(
    "claims",
    [
        pytest.param({"exp": int(time.time()) + 100 * 365 * 86_400, "iat": None}, id="100 years"),
        pytest.param({"exp": 2**63}, id="2^63"),
        pytest.param({"exp": 1e308}, id="1e308"),
        pytest.param({"exp": str(int(time.time()) + 600)}, id="string"),
        pytest.param({"exp": float(int(time.time()) + 600)}, id="float"),
    ],
)
def test_absurd_expiry_is_refused(host: LocalHost, claims: dict[str, object]) -> None:
    answer = httpx.get(
        f"{host.base}/v1/movies/most-watched", headers=bearer(uuid.uuid4(), **claims)
    )
    assert answer.status_code == 401, answer.text


def test_a_lifetime_over_the_maximum_is_refused(host: LocalHost) -> None:
    long_lived = bearer(uuid.uuid4(), expires_in=timedelta(days=31))
    answer = httpx.get(f"{host.base}/v1/movies/most-watched", headers=long_lived)
    assert answer.status_code == 401
    assert "lifetime" in answer.json()["detail"]


def test_answers_carry_no_banner_and_nosniff_and_per_user_reads_no_store(host: LocalHost) -> None:
    health = httpx.get(f"{host.base}/healthz")
    assert "server" not in health.headers
    assert health.headers["x-content-type-options"] == "nosniff"
    missing = httpx.get(f"{host.base}/nowhere")
    assert missing.headers["x-content-type-options"] == "nosniff"
    position = httpx.get(
        f"{host.base}/v1/views/{uuid.uuid4()}/position", headers=bearer(uuid.uuid4())
    )
    assert position.status_code == 404
    assert position.headers["cache-control"] == "no-store"
    assert position.headers["x-content-type-options"] == "nosniff"


@pytest.mark.parametrize("limit", ["+5", " 5", "1_000", "5 ", "0x10"])
def test_query_integers_are_strict(host: LocalHost, limit: str) -> None:
    answer = httpx.get(
        f"{host.base}/v1/movies/most-watched",
        params={"limit": limit},
        headers=bearer(uuid.uuid4()),
    )
    assert answer.status_code == 422, answer.text
    assert answer.json()["errors"][0]["pointer"] == "#/query/limit"


def test_most_watched_answers_many_concurrent_callers(host: LocalHost) -> None:
    # That they share one aggregate is tested on SharedRefresh itself (test_http_fair_share.py).
    async def ask() -> list[httpx.Response]:
        async with httpx.AsyncClient(base_url=host.base, timeout=PATIENCE) as client:
            return await asyncio.gather(
                *(
                    client.get(
                        "/v1/movies/most-watched",
                        params={"limit": limit},
                        headers=bearer(uuid.uuid4()),
                    )
                    for limit in range(1, 33)
                )
            )

    answers = asyncio.run(ask())
    assert {answer.status_code for answer in answers} == {200}
    assert answers[0].headers["cache-control"] == "no-store"


def _image_command() -> list[str]:
    """The Dockerfile's CMD, continuation lines joined."""
    dockerfile = (repo_root() / "Dockerfile").read_text().replace("\\\n", "")
    (command,) = re.findall(r"^CMD (\[.*\])$", dockerfile, re.MULTILINE)
    return list(json.loads(command))


def test_the_image_command_serves_with_the_same_limits(tmp_path: Path) -> None:
    port = free_port()
    argv = _image_command()
    env = {
        **os.environ,
        "PORT": str(port),
        "FUNCTION_TARGET": "ingest",
        "FUNCTION_SOURCE": str(repo_root() / "functions" / "main.py"),
        "JWT_SECRET": JWT_SECRET,
        "HTTP_REQUEST_TIMEOUT_SECONDS": str(REQUEST_TIMEOUT_SECONDS),
        "HTTP_KEEPALIVE_SECONDS": str(KEEPALIVE_SECONDS),
    }
    log = tmp_path / "gunicorn.log"
    server = subprocess.Popen(
        [str(Path(sys.executable).parent / argv[0]), *argv[1:]],
        cwd=repo_root(),
        env=env,
        stdout=log.open("wb"),
        stderr=subprocess.STDOUT,
    )
    image = LocalHost(f"http://127.0.0.1:{port}", port, "", log, server.pid)
    try:

        def healthy() -> httpx.Response | None:
            assert server.poll() is None, log.read_text()
            try:
                return httpx.get(f"{image.base}/healthz")
            except httpx.TransportError:
                return None

        health = eventually(healthy, timeout=60, what="gunicorn to serve")
        assert health.status_code == 200
        assert "server" not in health.headers
        assert health.headers["x-content-type-options"] == "nosniff"
        test_headers_over_the_budget_get_431_and_the_connection_closes(image)
        test_slow_headers_get_408_and_close(image)
        test_a_silent_connection_is_closed(image)
    finally:
        server.terminate()
        returncode = server.wait(timeout=30)
    assert returncode == 0, log.read_text()
