"""Scenario 3: the sink draining a pre-filled topic into ClickHouse, with commits.

The topic is filled first (valid events of many viewers and a few poison records), then one sink
process (``python -m functions.sink``, its own chDB directory) starts and the bench follows the
group's committed offsets. The rate is measured from the first commit to the last, so start-up
(engine, group join) is left out and reported apart. Afterwards the store must hold every valid
event and the dead-letter topic every poison record. A traced run fills the topic with records
that carry sampled trace contexts, as a traced ingest function writes them, and the sink exports
its spans and metrics to a local collector.
"""

from __future__ import annotations

import random
import subprocess
import time
import uuid
from datetime import UTC, datetime
from typing import Any

import orjson
from confluent_kafka import Consumer, KafkaException, TopicPartition

from functions.events import ViewRecord
from loadtest.harness import Harness, Profile, progress
from loadtest.topic_fill import fill_topic

__all__ = ["run_sink"]

POISON_EVERY = 200_000  # one bad record in so many: the fallback path runs during the drain
_TEMPLATES = 1_000


def _events(count: int) -> list[tuple[bytes, bytes]]:
    """Valid records (a fresh event id each) with a poison record every ``POISON_EVERY`` (and
    at least one in a short run)."""
    poison_every = min(POISON_EVERY, max(2, count // 2))
    now = datetime.now(UTC)
    templates = [
        ViewRecord.from_request(uuid.uuid4(), uuid.uuid4(), i * 1000, now).to_kafka()
        for i in range(_TEMPLATES)
    ]
    records = []
    for n in range(count):
        if n % poison_every == poison_every - 1:
            records.append((b"poison", b'{"schema_version": 1, "movie_time_offset": "soon"}'))
            continue
        key, value = templates[n % _TEMPLATES]
        template_id = orjson.loads(value)["event_id"].encode()
        records.append((key, value.replace(template_id, str(uuid.UUID(int=n, version=4)).encode())))
    return records


def _committed(reader: Consumer, topic: str, partitions: int) -> int | None:
    """Offsets the sink's group has committed on ``topic``; None while the group is settling."""
    try:
        offsets = reader.committed([TopicPartition(topic, p) for p in range(partitions)], 10)
    except KafkaException:  # e.g. NOT_COORDINATOR until the group's coordinator is known
        return None
    return sum(max(0, tp.offset) for tp in offsets)


def _trace_headers(count: int) -> list[list[tuple[str, bytes]]]:
    """Sampled W3C contexts of distinct traces, as the ingest function writes them."""
    return [
        [
            (
                "traceparent",
                f"00-{random.getrandbits(128):032x}-{random.getrandbits(64):016x}-01".encode(),
            )
        ]
        for _ in range(count)
    ]


def _drain_once(
    harness: Harness, profile: Profile, repeat: int, batch: int, traced: bool
) -> dict[str, Any]:
    topic = harness.new_topic("views-sink")
    harness.kafka.create_topics({f"{topic}.dlq": 1})
    records = _events(profile.sink_events)
    poison = sum(1 for key, _ in records if key == b"poison")
    progress(f"sink: filling {topic} with {len(records):,} records{' (traced)' if traced else ''}")
    fill_topic(
        harness.bootstrap,
        topic,
        records,
        lambda n: progress(f"  {n:,} produced"),
        _trace_headers(_TEMPLATES) if traced else (),
    )
    del records
    label = f"{repeat}-{batch}{'-traced' if traced else ''}"
    clickhouse = harness.scratch / f"clickhouse-sink-{label}"
    group = f"bench-sink-{uuid.uuid4().hex[:6]}"
    env = harness.function_env(
        topic, clickhouse, SINK_GROUP_ID=group, SINK_BATCH_MAX_RECORDS=str(batch)
    )
    if traced:
        env.update(harness.traced_env())
    subprocess.run(
        harness.python("-m", "clickhouse.migrate"), env={**env}, check=True, capture_output=True
    )
    total = profile.sink_events
    sink = harness.service(f"sink-{label}", harness.python("-m", "functions.sink"), env)
    started = time.monotonic()
    first: tuple[float, int, float] | None = None  # (time, committed, sink CPU) at first commit
    committed = 0
    # Reads the group's commits without joining it.
    reader = Consumer({"bootstrap.servers": harness.bootstrap, "group.id": group})
    with sink:
        last_report = 0.0
        while committed < total:
            sink.check_running()
            time.sleep(0.2)
            committed = _committed(reader, topic, 6) or committed
            now = time.monotonic()
            if first is None and committed:
                first = (now, committed, sink.cpu_seconds())
            if now - last_report > 2:
                progress(f"  sink committed {committed:,}/{total:,}")
                last_report = now
            if now - started > 60 + total / 1000:  # a sink slower than 1k events/s is broken
                raise TimeoutError(f"the sink committed {committed:,} of {total:,}; see {sink.log}")
        assert first is not None
        finished = time.monotonic()
        cpu = sink.cpu_seconds() - first[2]
        rss = sink.rss_bytes()
    reader.close()
    counted = orjson.loads(
        subprocess.run(
            harness.python("-m", "loadtest.chtool", "count"),
            env={**env},
            check=True,
            capture_output=True,
        ).stdout
    )
    dead_lettered = harness.topic_size(f"{topic}.dlq")
    drained, seconds = total - first[1], finished - first[0]
    if not drained:  # all in the first batch (a smoke run): count the start-up in
        drained, seconds = total, finished - started
    return {
        "repeat": repeat,
        "events": total,
        "batch_max_records": batch,
        "traced": traced,
        "rate": drained / seconds,
        "drain_seconds": seconds,
        "startup_seconds": first[0] - started,
        "sink_cores": cpu / seconds,
        "sink_rss_mb": rss / 2**20,
        "stored": counted["events"],
        "poison": poison,
        "dead_lettered": dead_lettered,
        "every_event_accounted_for": counted["events"] == total - poison
        and dead_lettered == poison,
    }


def run_sink(harness: Harness, profile: Profile, batches: tuple[int, ...]) -> list[dict[str, Any]]:
    """Each batch size untraced, and the largest traced too, interleaved within each repeat."""
    runs = []
    plan = [(batch, False) for batch in batches] + [(max(batches), True)]
    for repeat in range(1, profile.sink_repeats + 1):
        for batch, traced in plan:
            run = _drain_once(harness, profile, repeat, batch, traced)
            progress(
                f"  sink: {run['rate']:,.0f} events/s, {run['sink_cores']:.2f} cores,"
                f" batch {batch:,}{' traced' if traced else ''}, stored {run['stored']:,},"
                f" dead-lettered {run['dead_lettered']}"
            )
            runs.append(run)
    return runs
