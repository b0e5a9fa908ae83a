"""``make storage-study``: ClickHouse vs PostgreSQL 15 vs DuckDB on the same view events.

Writes ``loadtest/results/storage-<rows>-<timestamp>.json`` and ``.png`` and prints the table;
exits 1 if the engines' answers differ. See docs/storage-choice.md for the method and a run.
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import time
from pathlib import Path

import psutil

from loadtest.runs import RESULTS
from loadtest.storage.engines import ENGINES
from loadtest.storage.report import plot, table
from loadtest.storage.study import AnswersDiffer, StudyOptions, run_study


def _engines(text: str) -> tuple[str, ...]:
    names = tuple(name.strip() for name in text.split(",") if name.strip())
    unknown = sorted(set(names) - set(ENGINES))
    if unknown or not names:
        raise argparse.ArgumentTypeError(f"expected some of {', '.join(ENGINES)}; got {text!r}")
    return names


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=10_000_000, help="deliveries (default 10M)")
    parser.add_argument(
        "--engines", type=_engines, default=ENGINES, help="comma-separated (default: all three)"
    )
    parser.add_argument(
        "--steady-rate", type=int, default=20_000, help="rows/s of the inserts under reads"
    )
    parser.add_argument("--lookups", type=int, default=2_000, help="position lookups (warm)")
    parser.add_argument("--histories", type=int, default=200, help="viewers' histories (warm)")
    parser.add_argument("--out", type=Path, default=RESULTS, help="folder of the JSON and PNG")
    args = parser.parse_args()
    machine = {
        "cpus": psutil.cpu_count(),
        "memory_gb": round(psutil.virtual_memory().total / 2**30, 1),
        "load_average_at_start": psutil.getloadavg(),
        "python": platform.python_version(),
    }
    options = StudyOptions(
        rows=args.rows,
        engines=args.engines,
        steady_rate=args.steady_rate,
        lookups=args.lookups,
        histories=args.histories,
        extra=machine,
    )
    started = time.time()
    try:
        results = run_study(options)
    except AnswersDiffer as exc:
        print(f"storage study FAILED: {exc}", file=sys.stderr)
        raise SystemExit(1) from exc
    results["seconds"] = round(time.time() - started)
    results["load_average_at_end"] = psutil.getloadavg()
    args.out.mkdir(parents=True, exist_ok=True)
    stem = args.out / f"storage-{args.rows}-{time.strftime('%Y%m%d-%H%M%S')}"
    stem.with_suffix(".json").write_text(json.dumps(results, indent=2))
    plot(results, stem.with_suffix(".png"))
    print(table(results))
    print(f"\n{stem}.json\n{stem}.png")


if __name__ == "__main__":
    main()
