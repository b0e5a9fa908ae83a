"""One engine, one phase, in a process of its own (so that "cold" means a fresh process).

``python -m loadtest.storage.worker ENGINE PHASE SCRATCH [--postgres-port N]``:

- ``load``: a fresh store; the bulk of the deliveries in the sink's batch size, then the
  operator's after-load step, then the rest at a steady rate while reads run beside it;
- ``reads``: the store as ``load`` left it, opened anew: each read once (cold), then repeated
  (warm); the answers are kept for the comparison between engines.

The result is written to ``SCRATCH/ENGINE-PHASE.json``; phases carry wall-clock windows so that
the parent can attribute the memory it sampled.
"""

from __future__ import annotations

import argparse
import json
import statistics
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import psutil
from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)

from loadtest.storage.dataset import DAY_MS, SINK_BATCH, SINK_MAX_WAIT_S, Dataset, Plan
from loadtest.storage.engines import ENGINES, Engine, engine_type
from loadtest.storage.postgres import PostgresServer

__all__ = ["main", "progress_bar", "quantiles_ms"]

WARM_REPEATS = 5  # of the aggregates; lookups and histories are many already
DAY_TOP_EVERY_S = 2.0  # while inserting at a steady rate


def progress_bar() -> Progress:
    return Progress(
        TextColumn("{task.description:<34}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        TimeRemainingColumn(),
        console=Console(stderr=True),
    )


def quantiles_ms(seconds: list[float]) -> dict[str, float]:
    """p50, p99 and max in milliseconds."""
    ordered = sorted(seconds)
    if not ordered:
        return {"p50": 0.0, "p99": 0.0, "max": 0.0, "count": 0}

    def at(share: float) -> float:
        return ordered[min(len(ordered) - 1, int(share * len(ordered)))] * 1000

    return {"p50": at(0.5), "p99": at(0.99), "max": ordered[-1] * 1000, "count": len(ordered)}


def _timed(call: Callable[..., Any], *arguments: Any) -> tuple[float, Any]:
    started = time.perf_counter()
    answer = call(*arguments)
    return time.perf_counter() - started, answer


def _pss() -> int:
    return int(psutil.Process().memory_full_info().pss)


def _window(started: float) -> list[float]:
    """Start, end and this process's PSS at the end (a floor for phases shorter than a sample)."""
    return [started, time.time(), _pss()]


def load(engine_name: str, scratch: Path, postgres: PostgresServer | None) -> dict[str, Any]:
    data, plan = Dataset.load(scratch / "dataset"), Plan.load(scratch / "plan.json")
    rows = len(data.delivery)
    steady_batch = max(1, round(plan.steady_rate * SINK_MAX_WAIT_S))
    steady = list(data.batches(plan.bulk_rows, rows, steady_batch))
    # Encoded before the engine opens: the memory measured after this is the engine's.
    encode = engine_type(engine_name).encode
    steady_payloads = [encode(batch) for batch in steady]
    baseline = _pss()
    engine = engine_type(engine_name).open(scratch / engine_name, True, postgres)
    result: dict[str, Any] = {"baseline_pss": baseline, "phases": {}}
    with progress_bar() as bar:
        started = time.time()
        task = bar.add_task(f"{engine_name}: bulk insert", total=plan.bulk_rows)
        insert_seconds: list[float] = []
        for batch in data.batches(0, plan.bulk_rows, SINK_BATCH):
            payload = encode(batch)
            insert_seconds.append(_timed(engine.insert, payload)[0])
            bar.advance(task, len(batch))
        finish_seconds = _timed(engine.finish_load)[0]
        result["phases"]["bulk_insert"] = {
            "window": _window(started),
            "rows": plan.bulk_rows,
            "insert_seconds": sum(insert_seconds),
            "rows_per_second": plan.bulk_rows / max(sum(insert_seconds), 1e-9),
            "batch_ms": quantiles_ms(insert_seconds),
            "after_load_seconds": finish_seconds,
        }
        result["phases"]["reads_while_inserting"] = _reads_while_inserting(
            engine, plan, steady_payloads, [len(b) for b in steady], bar
        )
    engine.close()
    return result


def _reads_while_inserting(
    engine: Engine, plan: Plan, payloads: list[Any], sizes: list[int], bar: Progress
) -> dict[str, Any]:
    """Batches inserted on schedule (one per sink wait) while position lookups run
    back to back and the day's ranking every few seconds."""
    task = bar.add_task(f"{engine.name}: reads while inserting", total=sum(sizes))
    insert_seconds: list[float] = []
    behind_seconds = [0.0]

    def write() -> None:
        began = time.monotonic()
        for index, payload in enumerate(payloads):
            due = began + index * SINK_MAX_WAIT_S
            behind_seconds.append(max(0.0, time.monotonic() - due))
            time.sleep(max(0.0, due - time.monotonic()))
            insert_seconds.append(_timed(engine.insert, payload)[0])
            bar.advance(task, sizes[index])

    started = time.time()
    writer = threading.Thread(target=write, name="steady-inserts")
    writer.start()
    lookups: list[float] = []
    rankings: list[float] = []
    last_ranking = 0.0
    while writer.is_alive():
        user, movie = plan.positions[len(lookups) % len(plan.positions)]
        lookups.append(_timed(engine.position, user, movie)[0])
        if time.monotonic() - last_ranking >= DAY_TOP_EVERY_S:
            last_ranking = time.monotonic()
            day = (plan.day_start_ms, plan.day_start_ms + DAY_MS, plan.top)
            rankings.append(_timed(engine.day_top, *day)[0])
    writer.join()
    # At least one sink wait per batch: a single fast batch is not a rate.
    elapsed = max(time.time() - started, len(payloads) * SINK_MAX_WAIT_S)
    return {
        "window": _window(started),
        "rows": sum(sizes),
        "target_rows_per_second": plan.steady_rate,
        "achieved_rows_per_second": sum(sizes) / elapsed,
        "max_behind_schedule_s": max(behind_seconds),
        "batch_ms": quantiles_ms(insert_seconds),
        "position_ms": quantiles_ms(lookups),
        "day_top_ms": quantiles_ms(rankings),
    }


def reads(engine_name: str, scratch: Path, postgres: PostgresServer | None) -> dict[str, Any]:
    plan = Plan.load(scratch / "plan.json")
    baseline = _pss()
    started = time.time()
    engine = engine_type(engine_name).open(scratch / engine_name, False, postgres)
    day = (plan.day_start_ms, plan.day_start_ms + DAY_MS, plan.top)
    first_user, first_movie = plan.positions[0]
    cold = {
        "position_ms": _timed(engine.position, first_user, first_movie)[0] * 1000,
        "day_top_ms": _timed(engine.day_top, *day)[0] * 1000,
        "history_ms": _timed(engine.history, plan.histories[0])[0] * 1000,
        "viewers_per_movie_ms": _timed(engine.viewers_per_movie)[0] * 1000,
    }
    answers: dict[str, Any] = {"positions": [], "histories": {}}
    seconds: dict[str, list[float]] = {
        "position": [],
        "history": [],
        "day_top": [],
        "viewers_per_movie": [],
    }
    with progress_bar() as bar:
        work = len(plan.positions) + len(plan.histories) + 2 * WARM_REPEATS
        task = bar.add_task(f"{engine_name}: warm reads", total=work)
        for user, movie in plan.positions:
            took, found = _timed(engine.position, user, movie)
            seconds["position"].append(took)
            answers["positions"].append(found)
            bar.advance(task)
        for user in plan.histories:
            took, rows = _timed(engine.history, user)
            seconds["history"].append(took)
            answers["histories"][user] = rows
            bar.advance(task)
        for _ in range(WARM_REPEATS):
            took, answers["day_top"] = _timed(engine.day_top, *day)
            seconds["day_top"].append(took)
            took, answers["viewers_per_movie"] = _timed(engine.viewers_per_movie)
            seconds["viewers_per_movie"].append(took)
            bar.advance(task, 2)
    warm = {f"{name}_ms": quantiles_ms(values) for name, values in seconds.items()}
    warm["day_top_ms"]["median"] = statistics.median(seconds["day_top"]) * 1000
    on_disk = engine.bytes_on_disk()
    engine.close()
    return {
        "baseline_pss": baseline,
        "phases": {"reads": {"window": _window(started), "cold": cold, "warm": warm}},
        "bytes_on_disk": on_disk,
        "answers": answers,
    }


PHASES = {"load": load, "reads": reads}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("engine", choices=ENGINES)
    parser.add_argument("phase", choices=sorted(PHASES))
    parser.add_argument("scratch", type=Path)
    parser.add_argument("--postgres-port", type=int)
    args = parser.parse_args()
    postgres = (
        PostgresServer(args.scratch / "postgres", args.postgres_port)
        if args.engine == "postgres"
        else None
    )
    result = PHASES[args.phase](args.engine, args.scratch, postgres)
    (args.scratch / f"{args.engine}-{args.phase}.json").write_text(json.dumps(result))


if __name__ == "__main__":
    main()
