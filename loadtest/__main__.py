"""``python -m loadtest [--profile full|short|smoke] [--only SCENARIO ...]`` (``make bench``).

Starts its own broker and processes on free ports in a scratch folder, runs the scenarios, writes
``loadtest/results/<timestamp>.json`` and ``.png`` and prints the table. Needs ``wrk`` for the
full and short profiles (``make bench`` installs it); the smoke profile uses the asyncio generator.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import platform
import shutil
import signal
import subprocess
import sys
import tempfile
from datetime import UTC, datetime
from importlib.metadata import version
from pathlib import Path
from typing import Any

import orjson
from localkafka import free_port, kafka_version

from loadtest.freshness import run_freshness
from loadtest.harness import PROFILES, Harness, progress
from loadtest.ingest import run_ingest
from loadtest.load import wrk_available
from loadtest.queries import run_queries
from loadtest.report import plot, summarise, table
from loadtest.sink import run_sink
from loadtest.telemetry_floor import measure_telemetry_floor

RESULTS = Path(__file__).resolve().parent / "results"
SCENARIOS = ("ingest", "sink", "freshness", "queries")
SINK_BATCHES = (10_000, 50_000)


def _cpu_model() -> str:
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name"):
            return line.partition(":")[2].strip()
    return platform.processor() or "unknown"


def _machine() -> dict[str, Any]:
    return {
        "cores": os.cpu_count(),
        "cpu_model": _cpu_model(),
        "memory_gb": round(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30, 1),
        "load_average_at_start": os.getloadavg(),
        "kernel": platform.release(),
    }


def _versions() -> dict[str, str]:
    found = {"python": platform.python_version(), "kafka": kafka_version()}
    for package in (
        "functions-framework",
        "uvicorn",
        "uvloop",
        "httptools",
        "gunicorn",
        "starlette",
        "confluent-kafka",
        "fastapi",
        "aiokafka",
        "pydantic",
        "pyjwt",
        "chdb",
        "clickhouse-connect",
    ):
        found[package] = version(package)
    import confluent_kafka

    found["librdkafka"] = confluent_kafka.libversion()[0]
    if wrk_available():
        banner = subprocess.run(["wrk", "--version"], capture_output=True, text=True)
        found["wrk"] = (banner.stdout or banner.stderr).split()[1]
    return found


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m loadtest",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--profile", choices=sorted(PROFILES), default="full")
    parser.add_argument("--only", nargs="+", choices=SCENARIOS, default=list(SCENARIOS))
    parser.add_argument("--generator", choices=("wrk", "python"), help="override the profile's")
    parser.add_argument("--out", type=Path, default=RESULTS, help="folder of the results")
    parser.add_argument("--keep", action="store_true", help="keep the scratch folder (logs)")
    args = parser.parse_args(argv)
    profile = PROFILES[args.profile]
    if args.generator:
        profile = dataclasses.replace(profile, generator=args.generator)
    if profile.generator == "wrk" and not wrk_available():
        parser.error("wrk is not installed: apt-get install -y wrk (make bench does this)")

    # SIGTERM unwinds like Ctrl-C, so the broker and the measured processes are stopped too.
    signal.signal(signal.SIGTERM, lambda _signum, _frame: sys.exit(143))
    started_at = datetime.now(UTC)
    results: dict[str, Any] = {
        "started_at": started_at.isoformat(timespec="seconds"),
        "profile": dataclasses.asdict(profile),
        "machine": _machine(),
        "versions": _versions(),
    }
    scratch = Path(tempfile.mkdtemp(prefix="bench-"))
    progress(f"profile {profile.name}, scenarios {' '.join(args.only)}, scratch {scratch}")
    harness = Harness(scratch)
    try:
        if "ingest" in args.only:
            results["ingest"], results["ingest_warm_up_broker_us"] = run_ingest(
                harness, profile, free_port
            )
            results["telemetry_floor"] = measure_telemetry_floor(harness)
        if "sink" in args.only:
            batches = SINK_BATCHES if profile.name != "smoke" else SINK_BATCHES[:1]
            results["sink"] = run_sink(harness, profile, batches)
        if "freshness" in args.only:
            results["freshness"] = run_freshness(harness, profile)
        if "queries" in args.only:
            results["queries"] = run_queries(harness, profile)
    finally:
        harness.close()
        if not args.keep:
            shutil.rmtree(scratch, ignore_errors=True)
    results["machine"]["load_average_at_end"] = os.getloadavg()
    results["profile"] = profile.name
    results["profile_settings"] = dataclasses.asdict(profile)
    results["summary"] = summarise(results)

    args.out.mkdir(parents=True, exist_ok=True)
    stem = args.out / started_at.strftime("%Y%m%dT%H%M%SZ")
    stem.with_suffix(".json").write_bytes(orjson.dumps(results, option=orjson.OPT_INDENT_2))
    plot(results, stem.with_suffix(".png"))
    sys.stdout.write(table(results) + "\n")
    sys.stdout.write(f"\nwrote {stem}.json and {stem}.png\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
