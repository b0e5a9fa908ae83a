"""The chaos run: a load of acknowledged events while the broker, the sink and ClickHouse fail.

    make chaos                                   # 100k events
    make chaos CHAOS_ARGS="--events 20000 --broker-down 3"

It starts a broker of its own (free port), a sink process (``python -m functions.sink``) with an
embedded ClickHouse directory of its own, and posts events through the ingest function (its
functions-framework ASGI app, in this process). As the load passes 15 %, 40 % and 65 % of its
events it kills the broker (SIGKILL) and restarts it after ``--broker-down`` seconds, SIGKILLs
the sink and starts a new one, and makes ClickHouse refuse inserts (the sink detaches ``views``)
for ``--clickhouse-down`` seconds. Then it waits until the sink's group has committed every
record, stops the sink and reconciles the acknowledged events with ``views FINAL`` and
``latest_view`` (``reconcile.py``). Figures go to stdout and to ``loadtest/results/chaos-<time>/``
(``summary.json``, ``timeline.png``, the sink logs). Exit status 1 if the promise did not hold.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import signal
import sys
import threading
import time
import uuid
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import httpx
import orjson
from confluent_kafka import KafkaException, Producer
from localkafka import LocalKafka, free_port, group_lag, read_records
from localsink import SinkProcess, environment, migrate, query_store
from reconcile import SentEvent, read_and_reconcile, synthetic_events
from runs import figure, results_directory, scratch, write_summary

from clickhouse.store import ViewStore
from functions.auth import issue_dev_token
from functions.http.app import IngestApi
from functions.kafka_config import producer_config
from functions.producer import AsyncProducer
from functions.settings import Settings

ROOT = Path(__file__).resolve().parents[1]
DATABASE = "chaos"
POISON = (b'{"event_id": "unterminated', b'{"schema_version": 1, "movie_time_offset": -1}', b"")


@dataclass(frozen=True)
class ChaosConfig:
    events: int = 100_000
    users: int = 500
    movies: int = 40
    concurrency: int = 64
    broker_down_seconds: float = 5.0
    clickhouse_down_seconds: float = 5.0
    poison_every: int = 1_000  # one poison record straight into Kafka per this many events
    delivery_timeout_ms: int = 5_000
    session_timeout_ms: int = 10_000
    retry_max_ms: int = 10_000
    catch_up_timeout_seconds: float = 600.0
    seed: int | None = None


@dataclass
class Fault:
    name: str
    started: float
    ended: float | None = None


@dataclass
class Load:
    """What the load sent and what it was answered."""

    sent: dict[uuid.UUID, SentEvent] = field(default_factory=dict)
    acknowledged: list[uuid.UUID] = field(default_factory=list)
    rejected: dict[str, int] = field(default_factory=dict)  # answer -> count
    poison_sent: int = 0

    @property
    def answered(self) -> int:
        return len(self.acknowledged) + sum(self.rejected.values())


@dataclass
class Sample:
    seconds: float
    acknowledged: int
    rejected: int
    lag: int | None  # None while the broker cannot say


def _log(started: float, message: str) -> None:
    sys.stdout.write(f"[{time.monotonic() - started:7.1f}s] {message}\n")
    sys.stdout.flush()


class ChaosRun:
    def __init__(self, config: ChaosConfig, workdir: Path, results: Path) -> None:
        self.config = config
        self.results = results
        self.started = time.monotonic()
        self.broker = LocalKafka(workdir / "kafka", free_port())
        secret = uuid.uuid4().hex
        self.settings = Settings(
            kafka_bootstrap_servers=self.broker.bootstrap_servers,
            clickhouse_dsn=f"chdb://{workdir / 'clickhouse'}",
            clickhouse_database=DATABASE,
            jwt_secret=secret,
            sink_group_id="chaos-sink",
            kafka_delivery_timeout_ms=config.delivery_timeout_ms,
            kafka_session_timeout_ms=config.session_timeout_ms,
            sink_retry_max_ms=config.retry_max_ms,
            sink_fault_signals=True,
        )
        self.env = environment(self.settings)
        self.load = Load()
        self.faults: list[Fault] = []
        self.samples: list[Sample] = []
        self.sinks: list[SinkProcess] = []
        self._milestones: list[tuple[int, asyncio.Event]] = []

    def log(self, message: str) -> None:
        _log(self.started, message)

    def elapsed(self) -> float:
        return time.monotonic() - self.started

    # --- parts -----------------------------------------------------------------------------

    def start_sink(self) -> SinkProcess:
        sink = SinkProcess(self.env, self.results / f"sink-{len(self.sinks) + 1}.log").start()
        self.sinks.append(sink)
        return sink

    def lag(self) -> int | None:
        try:
            return group_lag(
                self.broker.bootstrap_servers,
                self.settings.sink_group_id,
                self.settings.views_topic,
            )
        except KafkaException:
            return None

    # --- the load --------------------------------------------------------------------------

    async def post_all(self, events: list[SentEvent]) -> None:
        from functions_framework.aio import _create_asgi_app_with_function

        # librdkafka reports every refused reconnect while the broker is down; that outage is
        # the point of the run, so its clients log through a logger that keeps quiet.
        quiet = {"logger": logging.getLogger("chaos.librdkafka")}
        producer = AsyncProducer(
            producer_config(self.settings) | quiet, self.settings.kafka_delivery_timeout_ms
        )

        def no_store() -> ViewStore:
            raise AssertionError("the chaos load only posts")

        api = IngestApi(self.settings, lambda: producer, no_store)
        app = _create_asgi_app_with_function(api.handle, "http", False)  # type: ignore[no-untyped-call]
        tokens = {user_id: self._token(user_id) for user_id in {e.user_id for e in events}}
        pending = iter(events)
        poison = Producer({"bootstrap.servers": self.broker.bootstrap_servers} | quiet)

        async def poster(client: httpx.AsyncClient) -> None:
            while event := next(pending, None):
                self.load.sent[event.event_id] = event
                self._mark_milestones()
                if len(self.load.sent) % self.config.poison_every == 0:
                    self._send_poison(poison)
                body = {
                    "movie_id": str(event.movie_id),
                    "movie_time_offset": event.movie_time_offset,
                    "event_time": event.event_time.isoformat(),
                    "event_id": str(event.event_id),
                }
                response = await client.post(
                    "/v1/views",
                    content=orjson.dumps(body),
                    headers={
                        "authorization": tokens[event.user_id],
                        "content-type": "application/json",
                    },
                )
                if response.status_code == 202:
                    self.load.acknowledged.append(event.event_id)
                else:
                    answer = str(response.status_code)
                    self.load.rejected[answer] = self.load.rejected.get(answer, 0) + 1

        transport = httpx.ASGITransport(app=app)
        try:
            async with httpx.AsyncClient(transport=transport, base_url="http://ingest") as client:
                await asyncio.gather(*(poster(client) for _ in range(self.config.concurrency)))
        finally:
            await asyncio.to_thread(producer.close)
            await asyncio.to_thread(poison.flush, 30)

    def _token(self, user_id: uuid.UUID) -> str:
        return "Bearer " + issue_dev_token(self.settings, user_id, ttl_seconds=6 * 3600)

    def _send_poison(self, producer: Producer) -> None:
        # Poison cannot pass the ingest function (it answers 4xx); it reaches Kafka from elsewhere.
        value = POISON[self.load.poison_sent % len(POISON)]
        producer.produce(self.settings.views_topic, value=value, key=uuid.uuid4().bytes)
        producer.poll(0)
        self.load.poison_sent += 1

    # --- the faults ------------------------------------------------------------------------

    async def sent_fraction(self, fraction: float) -> None:
        reached = asyncio.Event()
        self._milestones.append((int(fraction * self.config.events), reached))
        self._mark_milestones()
        await reached.wait()

    def _mark_milestones(self) -> None:
        for target, reached in self._milestones:
            if len(self.load.sent) >= target:
                reached.set()

    async def conduct(self) -> None:
        await self.sent_fraction(0.15)
        fault = self._begin("broker killed")
        self.broker.kill()
        await asyncio.sleep(self.config.broker_down_seconds)
        await asyncio.to_thread(self.broker.start)
        self._end(fault)

        await self.sent_fraction(0.40)
        fault = self._begin("sink SIGKILLed")
        await asyncio.to_thread(self.sinks[-1].kill)
        self.start_sink()
        self._end(fault)

        await self.sent_fraction(0.65)
        # The new sink must have installed its handlers: SIGUSR1 would otherwise kill it.
        await asyncio.to_thread(self.sinks[-1].wait_for_message, "partitions assigned", 120)
        fault = self._begin("ClickHouse refusing inserts")
        self.sinks[-1].send(signal.SIGUSR1)
        await asyncio.sleep(self.config.clickhouse_down_seconds)
        self.sinks[-1].send(signal.SIGUSR2)
        self._end(fault)

    def _begin(self, name: str) -> Fault:
        fault = Fault(name, self.elapsed())
        self.faults.append(fault)
        self.log(f"fault: {name}")
        return fault

    def _end(self, fault: Fault) -> None:
        fault.ended = self.elapsed()
        self.log(f"fault over: {fault.name} ({fault.ended - fault.started:.1f}s)")

    # --- observing -------------------------------------------------------------------------

    def sample_until(self, done: threading.Event) -> None:
        """Record answers and the sink's lag once a second, and print progress."""
        while not done.wait(1.0):
            rejected = sum(self.load.rejected.values())
            lag = self.lag() if not self._broker_down() else None
            self.samples.append(Sample(self.elapsed(), len(self.load.acknowledged), rejected, lag))
            self.log(
                f"sent {len(self.load.sent)}/{self.config.events}"
                f"  acked {len(self.load.acknowledged)}  rejected {rejected}"
                f"  sink lag {'?' if lag is None else lag}"
            )

    def _broker_down(self) -> bool:
        return bool(self.faults) and self.faults[0].ended is None

    # --- the whole run ---------------------------------------------------------------------

    async def run(self) -> dict[str, Any]:
        config = self.config
        self.log(f"broker on {self.broker.bootstrap_servers}; results in {self.results}")
        self.broker.start()
        self.broker.create_topics({self.settings.views_topic: 6, self.settings.dlq_topic: 1})
        migrate(self.env)
        self.start_sink().wait_for_message("partitions assigned", 120)
        events = synthetic_events(config.events, config.users, config.movies, config.seed)

        done = threading.Event()
        sampler = threading.Thread(target=self.sample_until, args=(done,), daemon=True)
        sampler.start()
        load_started = self.elapsed()
        await asyncio.gather(self.post_all(events), self.conduct())
        load_seconds = self.elapsed() - load_started
        self.log(f"load done in {load_seconds:.1f}s; waiting for the sink to catch up")

        deadline = time.monotonic() + config.catch_up_timeout_seconds
        while (lag := self.lag()) != 0:
            if time.monotonic() > deadline:
                raise TimeoutError(f"sink still {lag} records behind")
            await asyncio.sleep(0.2)
        caught_up_at = self.elapsed()
        done.set()
        sampler.join()
        self.samples.append(
            Sample(caught_up_at, len(self.load.acknowledged), sum(self.load.rejected.values()), 0)
        )
        last_fault_over = max(f.ended or 0.0 for f in self.faults)
        status = await asyncio.to_thread(self.sinks[-1].terminate)
        self.log(f"sink caught up; stopped with status {status}; reconciling")

        result = read_and_reconcile(
            lambda queries: query_store(self.env, *queries),
            DATABASE,
            self.load.sent,
            self.load.acknowledged,
        )
        dead_letters = read_records(self.broker.bootstrap_servers, self.settings.dlq_topic)
        origins = {
            (headers["dlq.origin.partition"], headers["dlq.origin.offset"])
            for headers in (dict(m.headers() or []) for m in dead_letters)
        }
        return {
            "config": asdict(config),
            "events_sent": len(self.load.sent),
            "acknowledged": len(self.load.acknowledged),
            "rejected": sum(self.load.rejected.values()),
            "rejected_by_status": self.load.rejected,
            "found_in_clickhouse": result.found,
            "lost": result.lost,
            "duplicates_after_final": result.duplicates_after_final,
            "wrong_latest_positions": result.wrong_latest_positions,
            "latest_positions_checked": result.pairs_checked,
            "unacknowledged_found": result.unacknowledged_found,
            "rows_before_final": result.rows_before_final,
            "poison_sent": self.load.poison_sent,
            "dlq_count": len(dead_letters),
            "dlq_distinct_origins": len(origins),
            "load_seconds": round(load_seconds, 1),
            "acknowledged_per_second": round(len(self.load.acknowledged) / load_seconds),
            "catch_up_seconds_after_last_fault": round(caught_up_at - last_fault_over, 1),
            "backlog_cleared_seconds_after_last_fault": backlog_cleared_after(
                self.samples, self.faults[-1]
            ),
            "catch_up_seconds_after_load": round(caught_up_at - load_started - load_seconds, 1),
            "faults": [asdict(f) for f in self.faults],
            "sink_processes": len(self.sinks),
            "promise_kept": result.holds and len(origins) == self.load.poison_sent,
            "reconciliation": result.as_dict(),
        }


def backlog_cleared_after(samples: list[Sample], fault: Fault) -> float | None:
    """Seconds from the end of ``fault`` until the lag is back to its level when it began.

    While the load still runs, full catch-up (lag 0) waits for the load to end; this tells how
    long the backlog the fault built up took to clear.
    """
    before = [s.lag for s in samples if s.seconds <= fault.started and s.lag is not None]
    baseline = max(before[-3:], default=0)  # the last few samples: lag jitters by a batch
    assert fault.ended is not None
    for sample in samples:
        if sample.seconds >= fault.ended and sample.lag is not None and sample.lag <= baseline:
            return round(sample.seconds - fault.ended, 1)
    return None


def plot(samples: list[Sample], faults: list[Fault], path: Path, title: str) -> None:
    with figure(path, title, "seconds since start", "events", "upper left") as axis:
        seconds = [s.seconds for s in samples]
        axis.plot(seconds, [s.acknowledged for s in samples], label="acknowledged (2xx)")
        axis.plot(seconds, [s.rejected for s in samples], label="rejected (503)")
        axis.plot(
            [s.seconds for s in samples if s.lag is not None],
            [s.lag for s in samples if s.lag is not None],
            label="sink lag (records not committed)",
        )
        colours = ["tab:red", "tab:purple", "tab:brown"]
        for fault, colour in zip(faults, colours, strict=False):
            axis.axvspan(
                fault.started,
                max(fault.ended or 0, fault.started + 0.5),
                color=colour,
                alpha=0.2,
                label=fault.name,
            )


def run_chaos(config: ChaosConfig, results: Path) -> dict[str, Any]:
    """One chaos run; its figures, also written to ``results/summary.json``."""
    with scratch(results, "chaos") as workdir:
        run = ChaosRun(config, workdir, results)
        try:
            summary = asyncio.run(run.run())
        finally:
            for sink in run.sinks:
                with contextlib.suppress(Exception):
                    if sink.process is not None and sink.process.poll() is None:
                        sink.kill()
            run.broker.stop()
    write_summary(results, summary)
    plot(
        run.samples,
        run.faults,
        results / "timeline.png",
        f"chaos run: {summary['acknowledged']} acknowledged, {summary['lost']} lost",
    )
    return summary


HEADLINES = (
    "events_sent",
    "acknowledged",
    "rejected",
    "found_in_clickhouse",
    "lost",
    "duplicates_after_final",
    "wrong_latest_positions",
    "dlq_count",
    "catch_up_seconds_after_last_fault",
    "backlog_cleared_seconds_after_last_fault",
)


def main() -> int:
    defaults = ChaosConfig()
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--events", type=int, default=defaults.events)
    parser.add_argument("--concurrency", type=int, default=defaults.concurrency)
    parser.add_argument("--broker-down", type=float, default=defaults.broker_down_seconds)
    parser.add_argument("--clickhouse-down", type=float, default=defaults.clickhouse_down_seconds)
    parser.add_argument("--seed", type=int, default=None, help="seed of the synthetic events")
    args = parser.parse_args()
    config = ChaosConfig(
        seed=args.seed,
        events=args.events,
        concurrency=args.concurrency,
        broker_down_seconds=args.broker_down,
        clickhouse_down_seconds=args.clickhouse_down,
    )
    # The ingest function logs each 503; the run counts them instead.
    logging.getLogger("functions").setLevel(logging.ERROR)
    logging.getLogger("chaos.librdkafka").setLevel(logging.CRITICAL)
    results = results_directory("chaos")
    summary = run_chaos(config, results)
    width = max(len(name) for name in HEADLINES)
    for name in HEADLINES:
        sys.stdout.write(f"{name:<{width}}  {summary[name]}\n")
    sys.stdout.write(f"written: {results / 'summary.json'}, {results / 'timeline.png'}\n")
    return 0 if summary["promise_kept"] else 1


if __name__ == "__main__":
    sys.exit(main())
