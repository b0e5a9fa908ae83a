"""``GET /readyz``: the cached readiness of the dependencies, and the ingest function's answer."""

from __future__ import annotations

import asyncio
import threading
import time

import orjson
from localkafka import free_port
from starlette.testclient import TestClient
from support import ingest_client

from clickhouse.store import ViewStore
from functions.readiness import CHECK_TIMEOUT_SECONDS, REFRESH_SECONDS, Readiness
from functions.settings import Settings


async def _probe_for(readiness: Readiness, seconds: float) -> list[dict[str, bool]]:
    """As many concurrent probes as a busy prober sends, for ``seconds``."""
    states = []
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        states.extend(await asyncio.gather(*(readiness.state() for _ in range(50))))
        await asyncio.sleep(0.01)
    return states


def test_probes_ask_each_dependency_at_most_about_once_a_second() -> None:
    calls = 0

    def check() -> bool:
        nonlocal calls
        calls += 1
        return True

    seconds = 3 * REFRESH_SECONDS
    states = asyncio.run(_probe_for(Readiness({"kafka": check}), seconds))
    assert len(states) > 100
    assert all(state == {"kafka": True} for state in states)
    assert 1 <= calls <= seconds / REFRESH_SECONDS + 1


def test_a_failing_dependency_is_named_without_its_error_and_comes_back_by_itself() -> None:
    failing = True

    def clickhouse() -> bool:
        if failing:
            raise ConnectionError("http://user:hunter2@clickhouse:8123 refused the connection")
        return True

    async def scenario() -> list[tuple[int, dict[str, object]]]:
        readiness = Readiness({"kafka": lambda: True, "clickhouse": clickhouse})
        answers = []
        first = await readiness.response()
        answers.append((first.status_code, orjson.loads(first.body)))
        nonlocal failing
        failing = False
        # The next refresh, about a second later, sees it back; nobody has to restart anything.
        deadline = time.monotonic() + 10 * REFRESH_SECONDS
        while time.monotonic() < deadline:
            answer = await readiness.response()
            if answer.status_code == 200:
                answers.append((200, orjson.loads(answer.body)))
                break
            await asyncio.sleep(0.05)
        return answers

    [(status, problem), (back, ready)] = asyncio.run(scenario())
    assert status == 503
    assert problem["detail"] == "not ready: clickhouse"
    assert problem["dependencies"] == {"kafka": "ready", "clickhouse": "not ready"}
    assert "hunter2" not in orjson.dumps(problem).decode()
    assert "refused" not in orjson.dumps(problem).decode()
    assert back == 200
    assert ready == {"status": "ready", "dependencies": {"kafka": "ready", "clickhouse": "ready"}}


def test_a_hanging_check_is_not_ready_and_never_runs_twice_at_once() -> None:
    released = threading.Event()
    running = 0
    most_at_once = 0
    lock = threading.Lock()

    def hanging() -> bool:
        nonlocal running, most_at_once
        with lock:
            running += 1
            most_at_once = max(most_at_once, running)
        released.wait(30)
        with lock:
            running -= 1
        return True

    async def scenario() -> tuple[float, list[dict[str, bool]], dict[str, bool]]:
        readiness = Readiness({"kafka": hanging})
        started = time.monotonic()
        first = await readiness.state()
        waited = time.monotonic() - started
        during = await _probe_for(readiness, 3 * REFRESH_SECONDS)
        released.set()
        await asyncio.sleep(CHECK_TIMEOUT_SECONDS + 2 * REFRESH_SECONDS)
        await readiness.state()  # starts the refresh that collects the answer
        await asyncio.sleep(CHECK_TIMEOUT_SECONDS)
        return waited, [first, *during], await readiness.state()

    waited, while_hanging, after = asyncio.run(scenario())
    assert waited < CHECK_TIMEOUT_SECONDS + 5  # the first probe waits for the timeout, no longer
    assert all(state == {"kafka": False} for state in while_hanging)
    assert most_at_once == 1
    assert after == {"kafka": True}


def test_readyz_of_the_ingest_function_with_its_broker_and_store(api: TestClient) -> None:
    answer = api.get("/readyz")
    assert answer.status_code == 200, answer.text
    assert answer.json() == {
        "status": "ready",
        "dependencies": {"kafka": "ready", "clickhouse": "ready"},
    }


def test_readyz_of_the_ingest_function_names_a_missing_broker(
    settings: Settings, store: ViewStore
) -> None:
    no_broker = settings.model_copy(update={"kafka_bootstrap_servers": f"127.0.0.1:{free_port()}"})
    with ingest_client(no_broker, store) as api:
        answer = api.get("/readyz")
        assert api.get("/healthz").status_code == 200  # alive all the same
    assert answer.status_code == 503
    assert answer.headers["content-type"] == "application/problem+json"
    assert answer.headers["retry-after"] == "1"
    assert answer.json()["detail"] == "not ready: kafka"
    assert answer.json()["dependencies"] == {"kafka": "not ready", "clickhouse": "ready"}
