"""Memory over time: does the sink's RSS keep growing as it processes records?

    make soak                                    # 5 minutes at 5000 records/s
    make soak SOAK_ARGS="--minutes 20 --rate 8000"

Starts a broker of its own and a sink process (``python -m functions.sink``, embedded ClickHouse
in a directory of its own), produces valid view records straight to Kafka at a steady rate over a
fixed set of viewers and movies, and reads the RSS the sink logs with every committed batch. After
the warm-up (the first quarter of the records) it compares the median RSS of the last third with
that of the first third: growing by more than the tolerance fails the run (exit status 1).
Results: ``loadtest/results/soak-<time>/`` (``summary.json``, ``rss.png``, the sink log).
"""

from __future__ import annotations

import argparse
import random
import statistics
import sys
import threading
import time
import uuid
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from confluent_kafka import Producer
from localkafka import LocalKafka, free_port
from localsink import SinkProcess, environment, migrate
from runs import figure, results_directory, scratch, write_summary

from functions.events import ViewRecord
from functions.settings import Settings

MIB = 1024 * 1024


@dataclass(frozen=True)
class SoakConfig:
    minutes: float = 5.0
    rate: int = 5_000  # records per second
    users: int = 10_000
    movies: int = 500
    warmup_fraction: float = 0.25
    tolerance_mib: float = 32.0  # growth allowed between the first and last third after warm-up
    tolerance_fraction: float = 0.05  # ... or this share of the RSS, whichever is larger


@dataclass(frozen=True)
class RssSample:
    records: int  # stored so far
    rss_bytes: int


def produce_steadily(
    bootstrap_servers: str, topic: str, config: SoakConfig, stop: threading.Event
) -> int:
    """Produce ``config.rate`` records a second until ``stop``; returns how many were produced."""
    rng = random.Random(7)
    users = [uuid.UUID(int=rng.getrandbits(128), version=4) for _ in range(config.users)]
    movies = [uuid.UUID(int=rng.getrandbits(128), version=4) for _ in range(config.movies)]
    producer = Producer(
        {"bootstrap.servers": bootstrap_servers, "linger.ms": 20, "compression.type": "lz4"}
    )
    produced = 0
    started = time.monotonic()
    while not stop.is_set():
        due = int((time.monotonic() - started) * config.rate)
        now = datetime.now(UTC)
        for _ in range(due - produced):
            record = ViewRecord.from_request(
                user_id=rng.choice(users),
                movie_id=rng.choice(movies),
                movie_time_offset=rng.randrange(7_200_000),
                received_at=now,
            )
            key, value = record.to_kafka()
            producer.produce(topic, value=value, key=key)
            produced += 1
        producer.poll(0)
        stop.wait(0.05)
    producer.flush(30)
    return produced


def rss_samples(sink: SinkProcess) -> list[RssSample]:
    """RSS and running total of each 'batch committed' line the sink logged."""
    return [
        RssSample(record["records_stored"], record["rss_bytes"])
        for record in list(sink.records)
        if record.get("message") == "batch committed" and record.get("rss_bytes")
    ]


def judge(samples: list[RssSample], config: SoakConfig) -> dict[str, Any]:
    """Compare the RSS right after warm-up with the RSS at the end; pure."""
    total = samples[-1].records
    steady = [s for s in samples if s.records >= config.warmup_fraction * total]
    third = max(1, len(steady) // 3)
    early = statistics.median(s.rss_bytes for s in steady[:third])
    late = statistics.median(s.rss_bytes for s in steady[-third:])
    allowed = max(config.tolerance_mib * MIB, config.tolerance_fraction * early)
    return {
        "records_processed": total,
        "batches_sampled": len(samples),
        "rss_start_mib": round(samples[0].rss_bytes / MIB, 1),
        "rss_after_warmup_mib": round(early / MIB, 1),
        "rss_end_mib": round(late / MIB, 1),
        "rss_peak_mib": round(max(s.rss_bytes for s in samples) / MIB, 1),
        "growth_after_warmup_mib": round((late - early) / MIB, 1),
        "allowed_growth_mib": round(allowed / MIB, 1),
        "keeps_growing": late - early > allowed,
    }


def plot(samples: list[RssSample], config: SoakConfig, path: Path, title: str) -> None:
    with figure(path, title, "records processed (millions)", "RSS (MiB)", "lower right") as axis:
        axis.plot(
            [s.records / 1e6 for s in samples],
            [s.rss_bytes / MIB for s in samples],
            label="sink RSS",
        )
        axis.axvline(
            config.warmup_fraction * samples[-1].records / 1e6,
            color="grey",
            linestyle="--",
            label="end of warm-up",
        )
        axis.set_ylim(bottom=0)


def run_soak(config: SoakConfig, results: Path) -> dict[str, Any]:
    with scratch(results, "soak") as workdir:
        broker = LocalKafka(workdir / "kafka", free_port())
        settings = Settings(
            kafka_bootstrap_servers=broker.bootstrap_servers,
            clickhouse_dsn=f"chdb://{workdir / 'clickhouse'}",
            clickhouse_database="soak",
            jwt_secret=uuid.uuid4().hex,
            sink_group_id="soak-sink",
        )
        env = environment(settings)
        stop = threading.Event()
        produced: list[int] = []
        try:
            broker.start()
            broker.create_topics({settings.views_topic: 6, settings.dlq_topic: 1})
            migrate(env)
            with SinkProcess(env, results / "sink.log") as sink:
                sink.wait_for_message("partitions assigned", 120)
                started = time.monotonic()
                producer = threading.Thread(
                    target=lambda: produced.append(
                        produce_steadily(
                            broker.bootstrap_servers, settings.views_topic, config, stop
                        )
                    )
                )
                producer.start()
                while time.monotonic() - started < config.minutes * 60:
                    time.sleep(10)
                    elapsed = time.monotonic() - started
                    latest = rss_samples(sink)[-1:] or [RssSample(0, 0)]
                    sys.stdout.write(
                        f"[{elapsed:6.0f}s] records stored {latest[0].records:>10,}"
                        f"  sink RSS {latest[0].rss_bytes / MIB:7.1f} MiB\n"
                    )
                    sys.stdout.flush()
                stop.set()
                producer.join()
                sink.terminate()
                samples = rss_samples(sink)
        finally:
            stop.set()
            broker.stop()
    verdict = judge(samples, config)
    summary = {"config": asdict(config), "records_produced": sum(produced), **verdict}
    write_summary(results, summary)
    plot(
        samples,
        config,
        results / "rss.png",
        f"sink RSS over {verdict['records_processed']:,} records"
        f" ({config.rate}/s for {config.minutes:g} min)",
    )
    return summary


def main() -> int:
    defaults = SoakConfig()
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--minutes", type=float, default=defaults.minutes)
    parser.add_argument("--rate", type=int, default=defaults.rate, help="records per second")
    args = parser.parse_args()
    config = SoakConfig(minutes=args.minutes, rate=args.rate)
    results = results_directory("soak")
    summary = run_soak(config, results)
    for name, value in summary.items():
        if name != "config":
            sys.stdout.write(f"{name:<26}{value}\n")
    sys.stdout.write(f"written: {results / 'summary.json'}, {results / 'rss.png'}\n")
    return 1 if summary["keeps_growing"] else 0


if __name__ == "__main__":
    sys.exit(main())
