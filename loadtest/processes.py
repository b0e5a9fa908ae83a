"""Processes the bench starts, and what they cost: CPU seconds and resident memory.

A ``Service`` is one command (with its forked workers) started with its own environment and log
file. ``cpu_seconds`` and ``rss_bytes`` add up the whole process tree, so a gunicorn master and
its workers count as one server.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections.abc import Mapping
from pathlib import Path

import httpx
import psutil
from localkafka import terminate

__all__ = [
    "ROOT",
    "Service",
    "tree_cpu_seconds",
    "tree_pss_bytes",
    "tree_rss_bytes",
    "tree_thread_cpu_seconds",
]

ROOT = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent


def _tree(pid: int) -> list[psutil.Process]:
    try:
        parent = psutil.Process(pid)
        return [parent, *parent.children(recursive=True)]
    except psutil.NoSuchProcess:
        return []


def tree_cpu_seconds(pid: int) -> float:
    """User + system CPU time of a process and its living descendants."""
    total = 0.0
    for process in _tree(pid):
        try:
            times = process.cpu_times()
        except psutil.NoSuchProcess:
            continue
        total += times.user + times.system
    return total


def tree_thread_cpu_seconds(pid: int) -> tuple[float, float]:
    """CPU time of the main threads of a process and its living descendants (a server worker's
    event loop), and of all their other threads (exporters, readers, librdkafka's threads)."""
    main = other = 0.0
    for process in _tree(pid):
        try:
            threads = process.threads()
        except psutil.NoSuchProcess:
            continue
        for thread in threads:
            seconds = thread.user_time + thread.system_time
            if thread.id == process.pid:
                main += seconds
            else:
                other += seconds
    return main, other


def tree_rss_bytes(pid: int) -> int:
    total = 0
    for process in _tree(pid):
        try:
            total += process.memory_info().rss
        except psutil.NoSuchProcess:
            continue
    return total


def tree_pss_bytes(pid: int) -> int:
    """Proportional set size of a process and its living descendants (shared pages divided
    among their users, so that a server's processes are not counted twice)."""
    total = 0
    for process in _tree(pid):
        try:
            total += process.memory_full_info().pss
        except psutil.NoSuchProcess:
            continue
    return total


class Service:
    """A command run from the checkout with extra environment variables, logging to a file."""

    def __init__(self, name: str, argv: list[str], env: Mapping[str, str], log: Path) -> None:
        self.name = name
        self._argv = argv
        self._env = {**os.environ, **env}
        self.log = log
        self._process: subprocess.Popen[bytes] | None = None

    @property
    def pid(self) -> int:
        assert self._process is not None, f"{self.name} is not running"
        return self._process.pid

    def start(self) -> Service:
        with self.log.open("ab") as output:
            self._process = subprocess.Popen(
                self._argv, cwd=ROOT, env=self._env, stdout=output, stderr=subprocess.STDOUT
            )
        return self

    def wait_http(self, url: str, timeout_seconds: float = 120) -> None:
        """Until ``url`` answers at all; fails early if the process exits."""
        deadline = time.monotonic() + timeout_seconds
        while time.monotonic() < deadline:
            self.check_running()
            try:
                httpx.get(url, timeout=2)
                return
            except httpx.TransportError:
                time.sleep(0.2)
        raise TimeoutError(f"{self.name} did not answer {url} in {timeout_seconds}s")

    def check_running(self) -> None:
        assert self._process is not None
        if self._process.poll() is not None:
            tail = self.log.read_text(errors="replace")[-3000:]
            raise RuntimeError(f"{self.name} exited with {self._process.returncode}:\n{tail}")

    def wait(self, timeout_seconds: float) -> int:
        assert self._process is not None
        return self._process.wait(timeout_seconds)

    def stop(self, timeout_seconds: float = 30) -> None:
        """SIGTERM, then SIGKILL if it does not exit in time."""
        if self._process is not None:
            terminate(self._process, timeout_seconds)

    def cpu_seconds(self) -> float:
        return tree_cpu_seconds(self.pid)

    def thread_cpu_seconds(self) -> tuple[float, float]:
        return tree_thread_cpu_seconds(self.pid)

    def rss_bytes(self) -> int:
        return tree_rss_bytes(self.pid)

    def __enter__(self) -> Service:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
