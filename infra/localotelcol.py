"""An OpenTelemetry Collector for tests and benchmarks: OTLP/HTTP in, OTLP JSON lines out.

    python infra/localotelcol.py build      # once: .local/otelcol/otelcol-watch-progress

The binary is built by ``infra/otelcol/build.sh`` (the collector's builder, Go from the module
proxy) the first time it is asked for, then kept. ``LocalCollector`` runs it on a free loopback
port with ``infra/otelcol/config.yaml``: every export it receives is appended, one JSON object
a line, to ``traces.jsonl`` or ``metrics.jsonl`` in its output folder.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from types import TracebackType
from typing import Any

import orjson
from localkafka import free_port, terminate

OTELCOL = Path(__file__).resolve().parent / "otelcol"
REPO = OTELCOL.parent.parent
BINARY = REPO / ".local" / "otelcol" / "otelcol-watch-progress"
_READY = b"Everything is ready"


def build() -> Path:
    """The collector binary, built first if missing or older than its builder configuration
    (``build.sh`` decides, and shows progress when it builds)."""
    subprocess.run(
        [str(OTELCOL / "build.sh"), str(BINARY.parent)], check=True, stdout=subprocess.DEVNULL
    )
    return BINARY


class LocalCollector:
    """The collector on a free port, writing into ``out``; stopped on exit. ``config``:
    ``config.yaml`` (JSON lines, for tests) or ``bench.yaml`` (counts only)."""

    def __init__(self, out: Path, config: str = "config.yaml") -> None:
        self.out = out
        self._config = OTELCOL / config
        self.port = free_port()
        self.endpoint = f"http://127.0.0.1:{self.port}"
        self._log = out / "otelcol.log"
        self._process: subprocess.Popen[bytes] | None = None

    def __enter__(self) -> LocalCollector:
        binary = build()
        self.out.mkdir(parents=True, exist_ok=True)
        env = {**os.environ, "OTELCOL_PORT": str(self.port), "OTELCOL_OUT": str(self.out)}
        with self._log.open("wb") as log:
            self._process = subprocess.Popen(
                [str(binary), "--config", str(self._config)],
                env=env,
                stdout=log,
                stderr=subprocess.STDOUT,
            )
        deadline = time.monotonic() + 30
        while _READY not in self._log.read_bytes():
            if self._process.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"the collector did not start:\n{self._log.read_text()}")
            time.sleep(0.05)
        return self

    def __exit__(
        self,
        _type: type[BaseException] | None,
        _value: BaseException | None,
        _traceback: TracebackType | None,
    ) -> None:
        if self._process is not None:
            terminate(self._process, 30)

    def exports(self, signal_name: str) -> Iterator[dict[str, Any]]:
        """Each OTLP JSON export received so far of ``traces`` or ``metrics``."""
        return read_exports(self.out / f"{signal_name}.jsonl")


def read_exports(path: Path) -> Iterator[dict[str, Any]]:
    """Each OTLP JSON export in a file the collector writes (whole lines only: it may be
    writing the last one while it is read)."""
    if not path.exists():
        return
    written, _, _unfinished = path.read_bytes().rpartition(b"\n")
    for line in written.splitlines():
        if line.strip():
            yield orjson.loads(line)


def spans(exports: Iterator[dict[str, Any]]) -> list[dict[str, Any]]:
    """The spans of OTLP JSON trace exports, each with its resource's ``service.name``."""
    found = []
    for export in exports:
        for resource in export.get("resourceSpans", []):
            service = _attribute(resource.get("resource", {}), "service.name")
            for scope in resource.get("scopeSpans", []):
                found.extend({**span, "service": service} for span in scope.get("spans", []))
    return found


def metric_names(exports: Iterator[dict[str, Any]]) -> dict[str, set[str]]:
    """Service name -> the metric names of OTLP JSON metric exports."""
    found: dict[str, set[str]] = {}
    for export in exports:
        for resource in export.get("resourceMetrics", []):
            service = _attribute(resource.get("resource", {}), "service.name")
            for scope in resource.get("scopeMetrics", []):
                names = {metric["name"] for metric in scope.get("metrics", [])}
                found.setdefault(str(service), set()).update(names)
    return found


def _attribute(holder: dict[str, Any], key: str) -> Any:
    return attributes(holder).get(key)


def attributes(holder: dict[str, Any]) -> dict[str, Any]:
    """The attributes of a span or resource as a plain dict (OTLP JSON spells int values as
    strings)."""
    return {
        attribute["key"]: next(iter(attribute["value"].values()), None)
        for attribute in holder.get("attributes", [])
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("command", choices=["build"])
    parser.parse_args()
    print(build())


if __name__ == "__main__":
    main()
