"""``python -m loadtest.abuse`` (``make abuse``): what each protection against hostile clients
costs in ingest throughput, and what it bounds, side by side (docs/security.md).

Four servers of the ingest function run at once on one broker, one uvicorn process each:
``unprotected`` (uvicorn's defaults, no rate limit, ranking recomputed per request),
``h11-bounded`` (h11 with ``h11_max_incomplete_event_size``), ``guarded`` (this project's
server limits, no rate limit) and ``guarded+fair-share`` (everything, at the default settings).
Throughput: ``wrk`` posting the bench's request pool (2,000 viewers) to each in turn, interleaved,
``--repeats`` times. Then the probes of the issue run against ``unprotected`` and
``guarded+fair-share``: memory held by unfinished headers, slow and silent connections, big
tokens, one viewer's flood and a most-watched storm, each measured by what another viewer sees.
Writes ``loadtest/results/abuse-<time>/summary.json``, ``throughput.png`` and ``victims.png``.
"""

from __future__ import annotations

import argparse
import asyncio
import multiprocessing
import os
import shutil
import statistics
import sys
import time
import uuid
from collections import Counter
from collections.abc import Awaitable, Callable
from concurrent.futures import ProcessPoolExecutor
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import httpx
from localkafka import free_port

from loadtest.chtool import synthetic_ids
from loadtest.harness import Harness, progress
from loadtest.load import python_load, quantile, wrk_load
from loadtest.processes import Service
from loadtest.request_pool import ViewRequest, sign
from loadtest.runs import figure, results_directory, scratch, write_summary

UNPROTECTED, PROTECTED = "unprotected", "guarded+fair-share"
FAIR_SHARE_OFF = {"RATE_LIMIT_PER_SECOND": "0", "MOST_WATCHED_MAX_AGE_SECONDS": "0"}
SERVERS: dict[str, tuple[str, dict[str, str]]] = {  # name: (abuse_server variant, environment)
    UNPROTECTED: ("httptools", FAIR_SHARE_OFF),
    "h11-bounded": ("h11-bounded", FAIR_SHARE_OFF),
    "guarded": ("guarded", FAIR_SHARE_OFF),
    PROTECTED: ("guarded", {}),
}


class Server:
    def __init__(self, harness: Harness, name: str, clickhouse: Path, logs: Path) -> None:
        variant, extra = SERVERS[name]
        self.name = name
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        env = harness.function_env(harness.new_topic(f"abuse-{variant}"), clickhouse, **extra)
        argv = harness.python("-m", "loadtest.abuse_server", variant, str(self.port))
        self.service = Service(name, argv, env, logs / f"{name.replace('+', '-')}.log")

    def start(self) -> Server:
        self.service.start()
        self.service.wait_http(f"{self.url}/healthz")
        return self

    def rss_mb(self) -> float:
        return self.service.rss_bytes() / 2**20


# --- probes: each returns its figures; ``victim`` latencies are another viewer's requests ----


@dataclass(frozen=True)
class Victim:
    """A well-behaved viewer's request, which must get ``expected``."""

    method: str
    path: str
    headers: dict[str, str]
    content: bytes = b""
    expected: int = 200


def _measure_victim(url: str, seconds: float, victim: Victim) -> dict[str, float]:
    """The victim's latencies, in a process of its own: the attackers' event loop (and its
    parsing of their answers) must not count as the server's delay."""

    async def measure() -> list[float]:
        latencies = []
        async with httpx.AsyncClient(base_url=url, timeout=60) as client:
            deadline = time.monotonic() + seconds
            while time.monotonic() < deadline:
                started = time.monotonic()
                answer = await client.request(
                    victim.method, victim.path, headers=victim.headers, content=victim.content
                )
                latencies.append(time.monotonic() - started)
                assert answer.status_code == victim.expected, answer.text
                await asyncio.sleep(0.15)  # ~6 requests a second: within a viewer's share
        return sorted(latencies)

    latencies = asyncio.run(measure())
    return {
        "p50_ms": quantile(latencies, 0.5) * 1000,
        "p99_ms": quantile(latencies, 0.99) * 1000,
        "requests": len(latencies),
    }


_VICTIMS = ProcessPoolExecutor(1, mp_context=multiprocessing.get_context("spawn"))


async def _victim_latencies(server: Server, seconds: float, victim: Victim) -> dict[str, float]:
    loop = asyncio.get_running_loop()
    return await loop.run_in_executor(_VICTIMS, _measure_victim, server.url, seconds, victim)


def _poster(secret: str, body: bytes) -> Victim:
    token = sign(uuid.uuid4(), secret)
    headers = {"Authorization": f"Bearer {token}", "Content-Type": "application/json"}
    return Victim("POST", "/v1/views", headers, body, 202)


async def header_memory(server: Server, connections: int, megabytes: int) -> dict[str, Any]:
    """``connections`` each sending ``megabytes`` of one header that never ends, held open
    together; the server's peak RSS growth meanwhile."""
    head = b"POST /v1/views HTTP/1.1\r\nHost: x\r\nX-Filler: "
    total = megabytes * 2**20
    finished = 0
    all_finished = asyncio.Event()

    async def send() -> int:
        nonlocal finished
        _reader, writer = await asyncio.open_connection("127.0.0.1", server.port)
        sent, chunk = 0, b"a" * 65_536
        try:
            writer.write(head)
            while sent < total:
                writer.write(chunk)
                await writer.drain()
                sent += len(chunk)
        except ConnectionError:
            pass
        finished += 1
        if finished == connections:
            all_finished.set()
        await all_finished.wait()  # every connection stays open until all have sent
        writer.close()
        return sent

    before = peak = server.rss_mb()
    senders = asyncio.gather(*(send() for _ in range(connections)))
    while not all_finished.is_set():
        peak = max(peak, server.rss_mb())
        await asyncio.sleep(0.1)
    peak = max(peak, server.rss_mb())
    sent = await senders
    return {
        "connections": connections,
        "megabytes_each": megabytes,
        "rss_growth_mb": round(peak - before, 1),
        "cut_short": sum(s < total for s in sent),
    }


async def big_tokens(
    server: Server, secret: str, body: bytes, clients: int, megabytes: int, seconds: float
) -> dict[str, Any]:
    victim = _poster(secret, body)
    quiet = await _victim_latencies(server, seconds / 2, victim)
    token = "Bearer " + "e" * (megabytes * 2**20 // 3) + "." + "e" * 100 + "." + "e" * 43
    request = (
        "POST /v1/views HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
        f"Content-Length: 2\r\nAuthorization: {token}\r\n\r\n{{}}"
    ).encode()
    stop = asyncio.Event()
    answered = 0

    async def attacker() -> None:
        nonlocal answered
        while not stop.is_set():
            try:
                reader, writer = await asyncio.open_connection("127.0.0.1", server.port)
                writer.write(request)
                await writer.drain()
                await reader.read(65_536)
                answered += 1
                writer.close()
            except ConnectionError:
                answered += 1

    attackers = [asyncio.create_task(attacker()) for _ in range(clients)]
    loaded = await _victim_latencies(server, seconds, victim)
    stop.set()
    await asyncio.gather(*attackers)
    return {"clients": clients, "megabytes": megabytes, "quiet": quiet, "attacked": loaded}


async def slow_clients(server: Server, connections: int, seconds: float) -> dict[str, Any]:
    """``connections`` trickling a header line a second, as many silent; how many the server
    closed within ``seconds``."""

    async def trickle(silent: bool) -> bool:
        reader, writer = await asyncio.open_connection("127.0.0.1", server.port)
        if not silent:
            writer.write(b"POST /v1/views HTTP/1.1\r\nHost: x\r\n")
        deadline = time.monotonic() + seconds
        try:
            while time.monotonic() < deadline:
                try:
                    if await asyncio.wait_for(reader.read(65_536), 1.0) == b"":
                        return True
                except TimeoutError:
                    if not silent:
                        writer.write(b"X-Slow: 1\r\n")
            return False
        except ConnectionError:
            return True
        finally:
            writer.close()

    outcomes = await asyncio.gather(*(trickle(i % 2 == 0) for i in range(connections * 2)))
    return {
        "connections": connections * 2,
        "seconds": seconds,
        "closed_silent": sum(outcomes[0::2]),
        "closed_trickling": sum(outcomes[1::2]),
    }


async def flood(server: Server, secret: str, seconds: float, body: bytes) -> dict[str, Any]:
    flooder = [ViewRequest(sign(uuid.uuid4(), secret), body)]
    victim_post = _poster(secret, body)
    quiet = await _victim_latencies(server, seconds / 2, victim_post)
    flooding = asyncio.create_task(python_load(server.url, flooder, 32, seconds))
    loaded = await _victim_latencies(server, seconds, victim_post)
    load = await flooding
    return {
        "flooder": {"accepted": load.succeeded, "refused": load.errors, "seconds": load.seconds},
        "quiet": quiet,
        "attacked": loaded,
    }


async def ranking_storm(
    server: Server, secret: str, rows: int, connections: int, seconds: float
) -> dict[str, Any]:
    viewer, movie = synthetic_ids(rows // 2)
    victim = {"Authorization": f"Bearer {sign(viewer, secret)}"}
    position = Victim("GET", f"/v1/views/{movie}/position", victim)

    async with httpx.AsyncClient(base_url=server.url, timeout=120) as client:
        # The first read opens the store: not part of the figures.
        (await client.get(position.path, headers=victim)).raise_for_status()
        await client.get("/v1/movies/most-watched", headers=victim)
    quiet = await _victim_latencies(server, seconds / 2, position)
    stop = asyncio.Event()
    statuses: Counter[int] = Counter()

    async def asker() -> None:
        headers = {"Authorization": f"Bearer {sign(uuid.uuid4(), secret)}"}
        async with httpx.AsyncClient(base_url=server.url, timeout=120) as client:
            while not stop.is_set():
                answer = await client.get("/v1/movies/most-watched?limit=1000", headers=headers)
                statuses[answer.status_code] += 1

    askers = [asyncio.create_task(asker()) for _ in range(connections)]
    loaded = await _victim_latencies(server, seconds, position)
    stop.set()
    await asyncio.gather(*askers)
    return {
        "connections": connections,
        "answers_by_status": dict(statuses),
        "quiet": quiet,
        "attacked": loaded,
    }


async def run_probes(
    server: Server, harness: Harness, arguments: argparse.Namespace
) -> dict[str, Any]:
    seconds = arguments.probe_seconds
    body = harness.pool[0].body
    results: dict[str, Any] = {}
    steps: list[tuple[str, Callable[[], Awaitable[dict[str, Any]]]]] = [
        ("header_memory", lambda: header_memory(server, 20, arguments.header_megabytes)),
        ("slow_clients", lambda: slow_clients(server, 100, arguments.slow_seconds)),
        ("big_tokens", lambda: big_tokens(server, harness.secret, body, 4, 4, seconds)),
        ("flood", lambda: flood(server, harness.secret, seconds, body)),
        (
            "ranking_storm",
            lambda: ranking_storm(server, harness.secret, arguments.rows, 16, seconds),
        ),
    ]
    for name, probe in steps:
        progress(f"{server.name}: probe {name}")
        results[name] = await probe()
        progress(f"{server.name}: {name} -> {results[name]}")
    return results


# --- throughput ------------------------------------------------------------------------------


def throughput(
    harness: Harness, servers: list[Server], arguments: argparse.Namespace
) -> dict[str, list[dict[str, Any]]]:
    runs: dict[str, list[dict[str, Any]]] = {server.name: [] for server in servers}
    for server in servers:
        progress(f"warm-up {server.name}")
        wrk_load(server.url, harness.pool_file, arguments.concurrency, 3)
    for repeat in range(arguments.repeats):
        for server in servers:  # interleaved: the machine's drift hits every server alike
            cpu_before = server.service.cpu_seconds()
            result = wrk_load(
                server.url, harness.pool_file, arguments.concurrency, arguments.seconds
            )
            # CPU per request suffers less from the other work on the machine than the rate.
            cpu_us = (server.service.cpu_seconds() - cpu_before) / max(1, result.requests) * 1e6
            runs[server.name].append(
                {**asdict(result), "rate": result.rate, "server_cpu_us": cpu_us}
            )
            progress(
                f"run {repeat + 1}/{arguments.repeats} {server.name}: {result.rate:,.0f} req/s,"
                f" p99 {result.p99_ms:.1f} ms, {cpu_us:.0f} µs server CPU a request,"
                f" {result.errors} errors"
            )
    return runs


def _median(runs: list[dict[str, Any]], key: str) -> float:
    return statistics.median(run[key] for run in runs)


def _plots(results: Path, summary: dict[str, Any]) -> None:
    names = list(summary["throughput"])
    with figure(
        results / "throughput.png",
        f"POST /v1/views at c={summary['concurrency']} (median of {summary['repeats']}; "
        "loaded 2-core machine)",
        "server",
        "2xx per second",
        "lower right",
    ) as axis:
        rates = [_median(summary["throughput"][name], "rate") for name in names]
        axis.bar(names, rates, label="req/s")
        for index, rate in enumerate(rates):
            axis.annotate(f"{rate:,.0f}", (index, rate), ha="center", va="bottom")
    probes = ("big_tokens", "flood", "ranking_storm")
    with figure(
        results / "victims.png",
        "Another viewer's p99 during each attack (loaded 2-core machine)",
        "attack",
        "p99 ms (log)",
        "upper left",
    ) as axis:
        width = 0.2
        for offset, (server, case) in enumerate(
            (s, c) for s in (UNPROTECTED, PROTECTED) for c in ("quiet", "attacked")
        ):
            values = [summary["probes"][server][probe][case]["p99_ms"] for probe in probes]
            positions = [index + (offset - 1.5) * width for index in range(len(probes))]
            axis.bar(positions, values, width, label=f"{server}, {case}")
        axis.set_xticks(range(len(probes)), probes)
        axis.set_yscale("log")


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m loadtest.abuse", description=__doc__)
    parser.add_argument("--seconds", type=float, default=8, help="each throughput run")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--concurrency", type=int, default=64)
    parser.add_argument("--probe-seconds", type=float, default=6)
    parser.add_argument("--slow-seconds", type=float, default=15, help="slow-client watch")
    parser.add_argument("--header-megabytes", type=int, default=10, help="per connection")
    parser.add_argument("--rows", type=int, default=1_000_000, help="events for the ranking")
    arguments = parser.parse_args()
    results = results_directory("abuse")
    with scratch(results, "abuse") as workdir:
        harness = Harness(workdir)
        servers: list[Server] = []
        try:
            template = workdir / "clickhouse-template"
            progress(f"generating {arguments.rows:,} events in ClickHouse")
            env = harness.function_env("unused", template)
            generate = harness.python(
                "-m", "loadtest.chtool", "generate", "--rows", str(arguments.rows)
            )
            if Service("generate", generate, env, workdir / "generate.log").start().wait(3600):
                raise RuntimeError((workdir / "generate.log").read_text()[-3000:])
            for name in SERVERS:
                clickhouse = workdir / f"clickhouse-{name.replace('+', '-')}"
                shutil.copytree(template, clickhouse, symlinks=True)  # chDB links its metadata
                servers.append(Server(harness, name, clickhouse, results).start())
            summary: dict[str, Any] = {
                "note": "figures from a 2-core machine shared with other work (load average "
                f"{os.getloadavg()[0]:.1f} at start): compare servers within this run only",
                "concurrency": arguments.concurrency,
                "repeats": arguments.repeats,
                "seconds": arguments.seconds,
                "throughput": throughput(harness, servers, arguments),
            }
            by_name = {server.name: server for server in servers}
            summary["probes"] = {
                name: asyncio.run(run_probes(by_name[name], harness, arguments))
                for name in (UNPROTECTED, PROTECTED)
            }
        finally:
            for server in servers:
                server.service.stop()
            harness.close()
    write_summary(results, summary)
    _plots(results, summary)
    for name, runs in summary["throughput"].items():
        sys.stdout.write(
            f"{name:>20}: {_median(runs, 'rate'):8,.0f} req/s"
            f"  p50 {_median(runs, 'p50_ms'):6.1f} ms  p99 {_median(runs, 'p99_ms'):6.1f} ms"
            f"  server CPU {_median(runs, 'server_cpu_us'):5.0f} µs/request\n"
        )
    sys.stdout.write(f"results: {results}\n")


if __name__ == "__main__":
    main()
