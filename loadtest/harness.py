"""What every scenario shares: a scratch folder, a Kafka broker, a signing secret, the request
pool, the environment of the functions, and progress lines on stderr."""

from __future__ import annotations

import contextlib
import secrets
import sys
import time
import uuid
from dataclasses import dataclass
from pathlib import Path

from localkafka import LocalKafka, free_port
from localotelcol import LocalCollector

from loadtest.processes import BIN, Service, tree_cpu_seconds
from loadtest.request_pool import make_pool, write_pool
from loadtest.topic_fill import topic_size

__all__ = ["Harness", "Profile", "progress"]

_STARTED = time.monotonic()


def progress(message: str) -> None:
    """A timestamped progress line on stderr (stdout is left for the table)."""
    sys.stderr.write(f"[{time.monotonic() - _STARTED:7.1f}s] {message}\n")
    sys.stderr.flush()


@dataclass(frozen=True)
class Profile:
    """How long and how big each scenario is."""

    name: str
    generator: str  # "wrk" or "python"
    ingest_concurrency: tuple[int, ...]
    ingest_seconds: float
    warmup_seconds: float
    repeats: int
    sink_events: int
    sink_repeats: int
    freshness_seconds: float
    freshness_rate: float  # background ingest, requests per second
    query_events: int
    query_lookups: int
    aggregate_runs: int


PROFILES = {
    "full": Profile("full", "wrk", (16, 64), 15, 10, 3, 2_000_000, 2, 30, 300, 10_000_000, 2000, 5),
    "short": Profile("short", "wrk", (16, 64), 8, 5, 2, 200_000, 2, 15, 300, 1_000_000, 500, 3),
    "smoke": Profile("smoke", "python", (4,), 1, 0.5, 1, 2_000, 1, 2, 20, 20_000, 20, 1),
}


class Harness:
    """A broker and scratch space for one bench run; ``close`` stops what it started."""

    def __init__(self, scratch: Path) -> None:
        self.scratch = scratch
        self.secret = secrets.token_urlsafe(32)
        progress("starting Kafka")
        self.kafka = LocalKafka(scratch / "kafka", free_port())
        self.kafka.start()
        self.pool = make_pool(self.secret, size=20_000, viewers=2_000, movies=1_000)
        self.pool_file = write_pool(self.pool, scratch / "requests.tsv")
        self._collector: LocalCollector | None = None
        self._started_on_demand = contextlib.ExitStack()  # stopped by close, before Kafka

    @property
    def bootstrap(self) -> str:
        return self.kafka.bootstrap_servers

    def broker_cpu_seconds(self) -> float:
        assert self.kafka.process is not None
        return tree_cpu_seconds(self.kafka.process.pid)

    def new_topic(self, purpose: str, partitions: int = 6) -> str:
        name = f"{purpose}-{uuid.uuid4().hex[:6]}"
        self.kafka.create_topics({name: partitions})
        return name

    def topic_size(self, topic: str) -> int:
        return topic_size(self.bootstrap, topic)

    def function_env(self, views_topic: str, clickhouse_dir: Path, **extra: str) -> dict[str, str]:
        """Environment of the functions (and of the baseline), as deployed."""
        return {
            "KAFKA_BOOTSTRAP_SERVERS": self.bootstrap,
            "VIEWS_TOPIC": views_topic,
            "DLQ_TOPIC": f"{views_topic}.dlq",
            "JWT_SECRET": self.secret,
            "CLICKHOUSE_DSN": f"chdb://{clickhouse_dir}",
            "LOG_LEVEL": "WARNING",
            **extra,
        }

    def traced_env(self) -> dict[str, str]:
        """What turns tracing on in a function: every trace sampled, OTLP to a local collector
        (started on first use)."""
        if self._collector is None:
            progress("starting the OpenTelemetry Collector")
            self._collector = self._started_on_demand.enter_context(
                LocalCollector(self.scratch / "otelcol", "bench.yaml")
            )
        return {
            "OTEL_EXPORTER_OTLP_ENDPOINT": self._collector.endpoint,
            "OTEL_TRACES_SAMPLER": "always_on",
        }

    def service(self, name: str, argv: list[str], env: dict[str, str]) -> Service:
        return Service(name, argv, env, self.scratch / f"{name}.log")

    def python(self, *args: str) -> list[str]:
        return [str(BIN / "python"), *args]

    def close(self) -> None:
        self._started_on_demand.close()
        progress("stopping Kafka")
        self.kafka.stop()


def start_local_host(harness: Harness, name: str, clickhouse: Path) -> tuple[Service, str, str]:
    """``python -m functions.local`` (ingest API + sink in one process, as the embedded engine
    requires) on a fresh topic; returns the service, its base URL and the topic."""
    topic = harness.new_topic(f"views-{name}")
    clickhouse.mkdir(parents=True, exist_ok=True)
    harness.kafka.create_topics({f"{topic}.dlq": 1})
    port = free_port()
    env = harness.function_env(
        topic,
        clickhouse,
        HOST="127.0.0.1",
        PORT=str(port),
        SINK_GROUP_ID=f"bench-{name}-{uuid.uuid4().hex[:6]}",
    )
    service = harness.service(name, harness.python("-m", "functions.local"), env).start()
    url = f"http://127.0.0.1:{port}"
    service.wait_http(f"{url}/healthz")
    return service, url, topic
