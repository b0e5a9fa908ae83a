"""The sink as a process of its own, for the tests and the chaos run that kill it for real.

    python infra/localsink.py query "SELECT ..." ...  # JSON; settings from the environment

``SinkProcess`` starts ``python -m functions.sink``, follows its JSON log lines on a thread, and
lets the caller wait for a log message, signal, SIGTERM or SIGKILL it. ``query_store`` runs one
query in a child process: an embedded (chDB) data directory opens in one process at a time and a
process opens one directory only, so whoever started the sink reads the sink's directory through
a child once the sink has exited.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import IO, Any

import orjson

LogRecord = dict[str, Any]


def environment(settings: Any) -> dict[str, str]:
    """The environment variables that make a child process read ``settings`` (a ``Settings``)."""
    env = dict(os.environ)
    for name, value in settings.model_dump(mode="json").items():
        if value is not None:
            env[name.upper()] = str(value).lower() if isinstance(value, bool) else str(value)
    return env


def migrate(env: dict[str, str]) -> None:
    """Create or update the sink's tables, in a child process that then frees the directory."""
    subprocess.run(
        [sys.executable, "-m", "clickhouse.migrate"], env=env, check=True, capture_output=True
    )


def query_store(env: dict[str, str], *sql: str) -> list[list[dict[str, Any]]]:
    """The rows of each query against ``CLICKHOUSE_DSN``, run by one child process."""
    done = subprocess.run(
        [sys.executable, __file__, "query", *sql], env=env, check=True, capture_output=True
    )
    results: list[list[dict[str, Any]]] = orjson.loads(done.stdout)
    return results


class SinkProcess:
    """One ``python -m functions.sink`` child and the JSON records it logged."""

    def __init__(self, env: dict[str, str], log_path: Path | None = None) -> None:
        self._env = env
        self._log_path = log_path
        self.records: list[LogRecord] = []
        self._changed = threading.Condition()
        self.process: subprocess.Popen[bytes] | None = None
        self._reader: threading.Thread | None = None

    def start(self) -> SinkProcess:
        self.process = subprocess.Popen(
            [sys.executable, "-m", "functions.sink"],
            env=self._env,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
        )
        assert self.process.stdout is not None
        self._reader = threading.Thread(
            target=self._follow, args=(self.process.stdout,), daemon=True
        )
        self._reader.start()
        return self

    def _follow(self, stream: IO[bytes]) -> None:
        # Unbuffered: the log must be complete even if this process is killed.
        log_file = self._log_path.open("ab", buffering=0) if self._log_path else None
        try:
            for line in stream:
                if log_file:
                    log_file.write(line)
                try:
                    record = orjson.loads(line)
                except orjson.JSONDecodeError:  # a native library writing to stdout
                    record = {"message": line.decode(errors="replace").rstrip()}
                with self._changed:
                    self.records.append(record)
                    self._changed.notify_all()
        finally:
            if log_file:
                log_file.close()
            with self._changed:
                self._changed.notify_all()

    def wait_for(self, accept: Callable[[LogRecord], bool], timeout: float, what: str) -> LogRecord:
        """The first logged record ``accept`` takes; fails if the sink exits or time runs out."""
        deadline = time.monotonic() + timeout
        seen = 0
        with self._changed:
            while True:
                for record in self.records[seen:]:
                    if accept(record):
                        return record
                seen = len(self.records)
                exited = self.process is not None and self.process.poll() is not None
                remaining = deadline - time.monotonic()
                if exited or remaining <= 0:
                    tail = "\n".join(str(r.get("message")) for r in self.records[-10:])
                    state = "exited" if exited else f"still running after {timeout}s"
                    raise AssertionError(f"sink {state} before {what}; last logs:\n{tail}")
                self._changed.wait(min(remaining, 0.5))

    def wait_for_message(self, message: str, timeout: float = 60) -> LogRecord:
        return self.wait_for(lambda r: r.get("message") == message, timeout, repr(message))

    def send(self, signum: signal.Signals) -> None:
        assert self.process is not None
        self.process.send_signal(signum)

    def kill(self) -> None:
        """SIGKILL: the process dies wherever it is, as in a node failure or an OOM kill."""
        assert self.process is not None
        self.process.kill()
        self._reap(timeout=30)

    def terminate(self, timeout: float = 60) -> int:
        """SIGTERM and wait for the exit; returns the exit status."""
        assert self.process is not None
        self.process.terminate()
        return self._reap(timeout)

    def _reap(self, timeout: float) -> int:
        assert self.process is not None
        status = self.process.wait(timeout)
        if self._reader is not None:
            self._reader.join(timeout)
        return status

    def __enter__(self) -> SinkProcess:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        if self.process is not None and self.process.poll() is None:
            self.kill()


def _query_main(queries: list[str]) -> None:
    from clickhouse.store import connect
    from functions.settings import get_settings

    client = connect(get_settings().clickhouse_dsn)
    results = [list(client.query(sql).named_results()) for sql in queries]
    sys.stdout.buffer.write(orjson.dumps(results, default=str))


if __name__ == "__main__":
    if sys.argv[1:2] != ["query"] or len(sys.argv) < 3:
        sys.exit('usage: python infra/localsink.py query "SELECT ..." ...')
    _query_main(sys.argv[2:])
