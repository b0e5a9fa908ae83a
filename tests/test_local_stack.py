"""`make run`'s supervisor (``infra/localkafka.py run``) with the real broker and the embedded
ClickHouse, on folders and ports of its own (safe beside a developer's `make run`): the lock on
the data folders, readiness, and the stop and restart."""

from __future__ import annotations

import fcntl
import json
import os
import shutil
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import httpx
import psutil
import pytest
from localkafka import free_port
from support import JWT_SECRET, bearer, eventually, repo_root

# What the broker logs when two processes share its folder or it reads a damaged log.
BROKER_DAMAGE = ("Failed to acquire lock", "CorruptRecordException", "Corruption found")


class Stack:
    """``make run`` on ``state`` (lock, broker and ClickHouse folders) and two ports."""

    def __init__(self, state: Path, http_port: int, kafka_port: int, name: str = "stack") -> None:
        self.state = state
        self.http_port = http_port
        self.kafka_port = kafka_port
        self.name = name
        self.starts = 0
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def log(self) -> Path:
        """The output of the latest start."""
        return self.state / f"{self.name}-{self.starts}.log"

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.http_port}"

    @property
    def lock(self) -> Path:
        return self.state / "stack.lock"

    @property
    def broker_log(self) -> Path:
        return self.state / "kafka" / "broker.out"

    def argv(self) -> list[str]:
        return [
            sys.executable,
            "infra/localkafka.py",
            "run",
            *("--lock", str(self.lock), "--data", str(self.state / "kafka")),
            *("--port", str(self.kafka_port), "--ready-url", f"{self.url}/readyz"),
            *("--topic", "views:6", "--topic", "views.dlq:1"),
            *("--", sys.executable, "-m", "functions.local"),
        ]

    def env(self) -> dict[str, str]:
        return {
            **{k: v for k, v in os.environ.items() if k != "KAFKA_BOOTSTRAP_SERVERS"},
            "CLICKHOUSE_DSN": f"chdb://{self.state / 'clickhouse'}",
            "JWT_SECRET": JWT_SECRET,
            "PORT": str(self.http_port),
            "SINK_BATCH_MAX_WAIT_MS": "100",
            "KAFKA_SESSION_TIMEOUT_MS": "6000",
        }

    def start(self) -> Stack:
        self.state.mkdir(parents=True, exist_ok=True)
        self.starts += 1
        self.process = subprocess.Popen(
            self.argv(),
            cwd=repo_root(),
            env=self.env(),
            stdout=self.log.open("ab"),
            stderr=subprocess.STDOUT,
            start_new_session=True,  # its own process group, as a terminal's foreground job
        )
        return self

    def output(self) -> str:
        return self.log.read_text(errors="replace")

    def wait_ready(self) -> None:
        def ready() -> bool:
            assert self.process is not None
            assert self.process.poll() is None, self.output()
            return f"ready: {self.url}" in self.output()

        eventually(ready, timeout=180, what=f"'ready' from {self.log}")

    def holders(self) -> dict[str, int]:
        """The pids the stack wrote into its lock file: supervisor, broker, functions."""
        holder = json.loads(self.lock.read_text())
        return {name: holder[name] for name in ("pid", "broker", "functions")}

    def interrupt(self) -> int:
        """Ctrl-C in its terminal: SIGINT to the foreground process group."""
        assert self.process is not None
        os.killpg(self.process.pid, signal.SIGINT)
        return self.process.wait(timeout=180)

    def run_again(self, *args: str, **changes: str) -> subprocess.CompletedProcess[str]:
        """A second `make run` (``args`` replace this stack's options) to completion."""
        argv = self.argv()
        for option, value in zip(args[::2], args[1::2], strict=True):
            argv[argv.index(option) + 1] = value
        return subprocess.run(
            argv,
            cwd=repo_root(),
            env={**self.env(), **changes},
            capture_output=True,
            text=True,
            timeout=60,
        )


def lock_is_free(lock: Path) -> bool:
    with lock.open("rb") as file:
        try:
            fcntl.flock(file, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            return False
        fcntl.flock(file, fcntl.LOCK_UN)
        return True


def post_view(url: str, user: uuid.UUID, movie: uuid.UUID, offset: int) -> httpx.Response:
    return httpx.post(
        f"{url}/v1/views",
        json={"movie_id": str(movie), "movie_time_offset": offset},
        headers=bearer(user),
        timeout=30,
    )


def assert_stopped_cleanly(stack: Stack, holders: dict[str, int]) -> None:
    """The supervisor returned only once every process holding the folders had exited."""
    assert lock_is_free(stack.lock), "the folders were still locked when the supervisor returned"
    assert not [pid for pid in holders.values() if psutil.pid_exists(pid)], holders
    broker_log = stack.broker_log.read_text(errors="replace")
    assert not [damage for damage in BROKER_DAMAGE if damage in broker_log], broker_log[-3000:]


@pytest.fixture(scope="module")
def running(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    stack = Stack(tmp_path_factory.mktemp("stack"), free_port(), free_port()).start()
    try:
        stack.wait_ready()
        holders = stack.holders()
        yield stack
    finally:
        returncode = stack.interrupt()
    assert returncode == 0, stack.output()
    assert_stopped_cleanly(stack, holders)


def test_ready_is_announced_once_readyz_answers_200(running: Stack) -> None:
    answer = httpx.get(f"{running.url}/readyz")
    assert answer.status_code == 200, answer.text
    assert answer.json() == {
        "status": "ready",
        "dependencies": {"kafka": "ready", "clickhouse": "ready"},
    }
    assert post_view(running.url, uuid.uuid4(), uuid.uuid4(), 1_000).status_code == 202


def test_a_second_stack_on_the_same_folders_is_refused_and_the_first_keeps_serving(
    running: Stack,
) -> None:
    broker_log_size = running.broker_log.stat().st_size
    started = time.monotonic()
    second = running.run_again()
    assert time.monotonic() - started < 30
    assert second.returncode == 1
    lines = (second.stdout + second.stderr).strip().splitlines()
    assert len(lines) == 1, lines
    [line] = lines
    pid = running.holders()["pid"]
    assert "already running" in line
    assert f"pid {pid}" in line
    assert str(running.http_port) in line
    assert f"kill {pid}" in line
    assert running.broker_log.stat().st_size == broker_log_size  # no second broker touched it
    assert post_view(running.url, uuid.uuid4(), uuid.uuid4(), 2_000).status_code == 202


def test_make_clean_is_refused_while_the_stack_runs(running: Stack, tmp_path: Path) -> None:
    # A checkout of the Makefile whose .local/ folders are this test's, locked by `running`.
    checkout = tmp_path / "checkout"
    (checkout / "infra").mkdir(parents=True)
    shutil.copy(repo_root() / "Makefile", checkout)
    shutil.copy(repo_root() / "infra" / "stacklock.py", checkout / "infra")
    for folder in (".venv", ".local/kafka", ".local/clickhouse"):
        (checkout / folder).mkdir(parents=True)
    cleaned = subprocess.run(
        [
            "make",
            "--no-print-directory",
            "-C",
            str(checkout),
            "clean",
            f"STACK_LOCK={running.lock}",
        ],
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert cleaned.returncode != 0
    assert "already running" in cleaned.stderr
    assert "Traceback" not in cleaned.stderr
    assert all((checkout / f).is_dir() for f in (".venv", ".local/kafka", ".local/clickhouse"))

    # Once free, it cleans.
    free = subprocess.run(
        ["make", "-s", "-C", str(checkout), "clean"],
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert free.returncode == 0, free.stderr
    assert not any((checkout / f).exists() for f in (".venv", ".local/kafka", ".local/clickhouse"))


def test_ports_held_by_another_stack_are_named(running: Stack, tmp_path: Path) -> None:
    other = Stack(tmp_path / "other", free_port(), running.kafka_port)
    kafka_taken = other.run_again(*("--lock", str(other.lock), "--data", str(tmp_path / "k")))
    assert kafka_taken.returncode == 1
    assert f"the Kafka broker of {running.state / 'kafka'}" in kafka_taken.stderr
    assert "Traceback" not in kafka_taken.stderr

    http_taken = other.run_again(
        *("--lock", str(other.lock), "--data", str(tmp_path / "k")),
        *("--port", str(free_port()), "--ready-url", f"{running.url}/readyz"),
    )
    assert http_taken.returncode == 1
    assert "functions.local" in http_taken.stderr
    assert str(repo_root()) in http_taken.stderr
    assert not (tmp_path / "k").exists()  # refused before any broker started


def test_readiness_flips_with_the_broker_stopped_and_resumed(running: Stack) -> None:
    broker = running.holders()["broker"]

    def readiness() -> httpx.Response:
        return httpx.get(f"{running.url}/readyz", timeout=10)

    def not_ready() -> httpx.Response | None:
        answer = readiness()
        return answer if answer.status_code == 503 else None

    os.kill(broker, signal.SIGSTOP)
    try:
        answer = eventually(not_ready, timeout=30, what="503 from /readyz")
        assert answer.headers["content-type"] == "application/problem+json"
        problem = answer.json()
        assert problem["detail"] == "not ready: kafka"
        assert problem["dependencies"] == {"kafka": "not ready", "clickhouse": "ready"}
        assert set(problem) == {"type", "title", "status", "detail", "dependencies"}
        assert httpx.get(f"{running.url}/healthz").status_code == 200  # alive, not ready
    finally:
        os.kill(broker, signal.SIGCONT)
    eventually(lambda: readiness().status_code == 200, timeout=60, what="readiness back")
    assert post_view(running.url, uuid.uuid4(), uuid.uuid4(), 3_000).status_code == 202


def test_ctrl_c_then_an_immediate_restart_serves_without_errors(tmp_path: Path) -> None:
    stack = Stack(tmp_path, free_port(), free_port())
    user, movie = uuid.uuid4(), uuid.uuid4()
    offset = 0

    def position() -> int | None:
        answer = httpx.get(f"{stack.url}/v1/views/{movie}/position", headers=bearer(user))
        assert answer.status_code in (200, 404), answer.text
        return answer.json()["movie_time_offset"] if answer.status_code == 200 else None

    for _ in range(3):  # start, Ctrl-C, start at once, Ctrl-C, start at once
        stack.start().wait_ready()
        holders = stack.holders()
        # Ready means ready: every request from now on is answered without a 5xx.
        for _ in range(20):
            offset += 1_000
            posted = post_view(stack.url, user, movie, offset)
            assert posted.status_code == 202, posted.text
        eventually(
            lambda last=offset: position() == last, timeout=30, what="the last position stored"
        )
        assert stack.interrupt() == 0, stack.output()
        assert_stopped_cleanly(stack, holders)
        assert "Traceback" not in stack.output()


def test_a_damaged_broker_folder_is_named_with_the_remedy(tmp_path: Path) -> None:
    stack = Stack(tmp_path, free_port(), free_port())
    meta = tmp_path / "kafka" / "log" / "meta.properties"
    meta.parent.mkdir(parents=True)
    # What the broker finds when its folder belongs to another node: it refuses to start.
    meta.write_text(f"version=1\nnode.id=7\ncluster.id={uuid.uuid4()}\n")
    refused = stack.run_again()
    assert refused.returncode == 1
    [line] = refused.stderr.strip().splitlines()
    assert str(tmp_path / "kafka") in line
    assert "`make clean`" in line
    assert "Traceback" not in refused.stderr + refused.stdout
    assert lock_is_free(stack.lock)
