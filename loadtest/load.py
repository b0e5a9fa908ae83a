"""Load generators: ``wrk`` (the benchmark's) and a small asyncio one (smoke runs, paced load).

Both send the prepared pool of ``loadtest/request_pool.py`` over keep-alive connections, each
connection one request at a time (closed loop), and report the same ``LoadResult``. The
generator's own CPU time is part of the result: a generator near one full core is the bottleneck.
"""

from __future__ import annotations

import asyncio
import itertools
import resource
import shutil
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit

import orjson

from loadtest.request_pool import ViewRequest

__all__ = ["LoadResult", "python_load", "quantile", "wrk_available", "wrk_load"]

WRK_SCRIPT = Path(__file__).resolve().parent / "wrk" / "views.lua"


@dataclass(frozen=True)
class LoadResult:
    generator: str
    requests: int
    succeeded: int  # 2xx answers
    errors: int  # non-2xx answers, socket errors and time-outs
    seconds: float
    p50_ms: float
    p99_ms: float
    generator_cpu_seconds: float

    @property
    def rate(self) -> float:
        return self.succeeded / self.seconds if self.seconds else 0.0


def wrk_available() -> bool:
    return shutil.which("wrk") is not None


def _children_cpu_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def wrk_load(
    url: str, pool_file: Path, concurrency: int, seconds: float, threads: int = 1
) -> LoadResult:
    """``wrk`` for ``seconds`` at ``concurrency`` connections; its CPU from its rusage."""
    before = _children_cpu_seconds()
    completed = subprocess.run(
        [
            *("wrk", f"-t{threads}", f"-c{concurrency}", f"-d{max(1, round(seconds))}s"),
            *("--timeout", "10s", "--latency", "-s", str(WRK_SCRIPT), url, "--", str(pool_file)),
        ],
        capture_output=True,
        text=True,
        check=True,
    )
    cpu = _children_cpu_seconds() - before
    summary = orjson.loads(completed.stdout.strip().splitlines()[-1])
    socket_errors = sum(
        summary[f"errors_{kind}"] for kind in ("connect", "read", "write", "timeout")
    )
    return LoadResult(
        generator="wrk",
        requests=summary["requests"],
        succeeded=summary["requests"] - summary["errors_status"],
        errors=summary["errors_status"] + socket_errors,
        seconds=summary["duration_us"] / 1e6,
        p50_ms=summary["latency_p50_us"] / 1000,
        p99_ms=summary["latency_p99_us"] / 1000,
        generator_cpu_seconds=cpu,
    )


def _request_bytes(host: str, request: ViewRequest) -> bytes:
    return (
        f"POST /v1/views HTTP/1.1\r\nHost: {host}\r\nAuthorization: Bearer {request.token}\r\n"
        f"Content-Type: application/json\r\nContent-Length: {len(request.body)}\r\n\r\n"
    ).encode() + request.body


async def _read_status(reader: asyncio.StreamReader) -> int:
    head = await reader.readuntil(b"\r\n\r\n")
    status = int(head.split(b" ", 2)[1])
    length = 0
    for line in head.split(b"\r\n")[1:]:
        name, _, value = line.partition(b":")
        if name.strip().lower() == b"content-length":
            length = int(value)
    await reader.readexactly(length)
    return status


async def python_load(
    url: str,
    pool: list[ViewRequest],
    concurrency: int,
    seconds: float,
    rate: float | None = None,
) -> LoadResult:
    """Keep-alive connections posting the pool for ``seconds``; at most ``rate`` req/s if given."""
    parts = urlsplit(url)
    host, port = parts.hostname or "127.0.0.1", parts.port or 80
    prepared = itertools.cycle([_request_bytes(f"{host}:{port}", r) for r in pool])
    latencies: list[float] = []
    statuses: list[int] = []
    failures = 0
    start = time.monotonic()
    deadline = start + seconds
    interval = concurrency / rate if rate else 0.0
    cpu_before = time.process_time()

    async def connection(index: int) -> None:
        nonlocal failures
        reader, writer = await asyncio.open_connection(host, port)
        next_send = start + interval * index / concurrency
        try:
            while (now := time.monotonic()) < deadline:
                if interval:
                    if next_send > now:
                        await asyncio.sleep(next_send - now)
                    next_send += interval
                sent = time.monotonic()
                writer.write(next(prepared))
                try:
                    statuses.append(await _read_status(reader))
                except (asyncio.IncompleteReadError, ConnectionError):
                    failures += 1
                    return
                latencies.append(time.monotonic() - sent)
        finally:
            writer.close()

    await asyncio.gather(*(connection(i) for i in range(concurrency)))
    elapsed = time.monotonic() - start
    succeeded = sum(1 for s in statuses if 200 <= s < 300)
    latencies.sort()
    return LoadResult(
        generator="python",
        requests=len(statuses),
        succeeded=succeeded,
        errors=len(statuses) - succeeded + failures,
        seconds=elapsed,
        p50_ms=quantile(latencies, 0.50) * 1000,
        p99_ms=quantile(latencies, 0.99) * 1000,
        generator_cpu_seconds=time.process_time() - cpu_before,
    )


def quantile(sorted_values: list[float], q: float) -> float:
    """The value at fraction ``q`` (0..1) of sorted values, the nearest rank; 0 if none."""
    if not sorted_values:
        return 0.0
    return sorted_values[min(len(sorted_values) - 1, round(q * (len(sorted_values) - 1)))]
