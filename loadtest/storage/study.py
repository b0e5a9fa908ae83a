"""The study: generate once, run every engine's phases, check the answers agree, report.

Each engine's phases run in child processes (``worker.py``) while this process samples the
memory (PSS) of the child and, for PostgreSQL, of the server's processes. PostgreSQL is
restarted between loading and reading, so its first reads are cold like the embedded engines'.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from localkafka import free_port

from loadtest.processes import ROOT, tree_pss_bytes
from loadtest.storage.dataset import generate, make_plan
from loadtest.storage.engines import ENGINES
from loadtest.storage.postgres import PostgresServer, ensure_installed
from loadtest.storage.worker import progress_bar

__all__ = ["AnswersDiffer", "StudyOptions", "run_study"]

SAMPLE_EVERY_S = 0.25


class AnswersDiffer(Exception):
    """Two engines answered one question differently on the same data."""


@dataclass(frozen=True)
class StudyOptions:
    rows: int = 10_000_000
    engines: tuple[str, ...] = ENGINES
    steady_share: float = 0.1  # of the rows, inserted at a steady rate under reads
    steady_rate: int = 20_000
    lookups: int = 2_000
    histories: int = 200
    scratch_parent: Path | None = None
    extra: dict[str, Any] = field(default_factory=dict)


class _MemorySampler:
    """(time, client PSS, server PSS) every ``SAMPLE_EVERY_S`` while a worker runs."""

    def __init__(self, client: int, server: int | None) -> None:
        self.samples: list[tuple[float, int, int]] = []
        self._client, self._server = client, server
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="memory-sampler", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.wait(SAMPLE_EVERY_S):
            server = tree_pss_bytes(self._server) if self._server is not None else 0
            self.samples.append((time.time(), tree_pss_bytes(self._client), server))

    def stop(self) -> None:
        self._stop.set()
        self._thread.join()

    def peak(self, window: list[float], client_baseline: int) -> int:
        start, end, client_at_end = window
        within = [
            max(0, client - client_baseline) + server
            for at, client, server in self.samples
            if start <= at <= end
        ]
        return max(within, default=max(0, int(client_at_end) - client_baseline))


def _run_worker(
    engine: str, phase: str, scratch: Path, postgres: PostgresServer | None
) -> dict[str, Any]:
    argv = [sys.executable, "-m", "loadtest.storage.worker", engine, phase, str(scratch)]
    if postgres is not None:
        argv += ["--postgres-port", str(postgres.port)]
    child = subprocess.Popen(argv, cwd=ROOT)
    sampler = _MemorySampler(child.pid, postgres.pid() if postgres is not None else None)
    code = child.wait()
    sampler.stop()
    if code != 0:
        raise RuntimeError(f"{engine} {phase} failed (exit {code})")
    result: dict[str, Any] = json.loads((scratch / f"{engine}-{phase}.json").read_text())
    for phase_result in result["phases"].values():
        phase_result["peak_memory_bytes"] = sampler.peak(
            phase_result["window"], result["baseline_pss"]
        )
    return result


def _run_engine(engine: str, scratch: Path) -> dict[str, Any]:
    if engine != "postgres":
        (scratch / engine).mkdir()
        return {
            **_run_worker(engine, "load", scratch, None)["phases"],
            **_reads(_run_worker(engine, "reads", scratch, None)),
        }
    server = PostgresServer(scratch / "postgres", free_port())
    server.initialise()
    server.start()
    try:
        loaded = _run_worker(engine, "load", scratch, server)["phases"]
        server.stop()  # empty shared buffers: the reads start cold
        server.start()
        return {**loaded, **_reads(_run_worker(engine, "reads", scratch, server))}
    finally:
        server.stop()


def _reads(result: dict[str, Any]) -> dict[str, Any]:
    return {
        **result["phases"],
        "bytes_on_disk": result["bytes_on_disk"],
        "_answers": result["answers"],
    }


def _first_difference(left: Any, right: Any, path: str = "") -> str | None:
    if isinstance(left, dict) and isinstance(right, dict):
        for key in sorted(set(left) | set(right)):
            if key not in left or key not in right:
                return f"{path}/{key}: present in one engine only"
            found = _first_difference(left[key], right[key], f"{path}/{key}")
            if found:
                return found
        return None
    if isinstance(left, list) and isinstance(right, list):
        if len(left) != len(right):
            return f"{path}: {len(left)} vs {len(right)} items"
        for index, (a, b) in enumerate(zip(left, right, strict=True)):
            found = _first_difference(a, b, f"{path}[{index}]")
            if found:
                return found
        return None
    return None if left == right else f"{path}: {left!r} vs {right!r}"


def check_answers(answers: dict[str, Any]) -> None:
    """Raise ``AnswersDiffer`` unless every engine answered every question alike."""
    names = list(answers)
    for other in names[1:]:
        difference = _first_difference(answers[names[0]], answers[other])
        if difference is not None:
            raise AnswersDiffer(f"{names[0]} and {other} disagree at {difference}")


def run_study(options: StudyOptions) -> dict[str, Any]:
    """Run the study; returns the results (answers checked equal, else ``AnswersDiffer``)."""
    if "postgres" in options.engines:
        ensure_installed()
    scratch = Path(tempfile.mkdtemp(prefix="storage-study-", dir=options.scratch_parent))
    scratch.chmod(0o755)  # PostgreSQL runs as its own user below it
    try:
        with progress_bar() as bar:
            task = bar.add_task(f"generating {options.rows:,} deliveries", total=2)
            data = generate(options.rows)
            bar.advance(task)
            (scratch / "dataset").mkdir()
            data.save(scratch / "dataset")
            plan = make_plan(
                data, options.lookups, options.histories, options.steady_share, options.steady_rate
            )
            plan.save(scratch / "plan.json")
            bar.advance(task)
        dataset = {
            "deliveries": len(data.delivery),
            "unique_events": len(data.user),
            "viewers": len(data.user_ids),
            "movies": len(data.movie_ids),
            "bulk_rows": plan.bulk_rows,
            "steady_rows": len(data.delivery) - plan.bulk_rows,
        }
        del data
        engines = {engine: _run_engine(engine, scratch) for engine in options.engines}
        answers = {name: result.pop("_answers") for name, result in engines.items()}
        check_answers(answers)
        return {
            "rows": options.rows,
            "dataset": dataset,
            "engines": engines,
            "answers_compared": list(engines) if len(engines) > 1 else [],
            **options.extra,
        }
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
