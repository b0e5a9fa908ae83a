"""What the long runs (``make chaos``, ``make soak``) share: a results directory, a scratch
directory, the summary file and the plot."""

from __future__ import annotations

import json
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

RESULTS = Path(__file__).resolve().parent / "results"


def results_directory(kind: str) -> Path:
    """``loadtest/results/<kind>-<UTC time>``: one per run, never overwritten."""
    return RESULTS / f"{kind}-{datetime.now(UTC):%Y%m%dT%H%M%SZ}"


@contextmanager
def scratch(results: Path, kind: str) -> Iterator[Path]:
    """Create ``results``; yield a scratch directory (broker and ClickHouse data), removed
    after the run."""
    results.mkdir(parents=True, exist_ok=True)
    workdir = Path(tempfile.mkdtemp(prefix=f"{kind}-"))
    try:
        yield workdir
    finally:
        shutil.rmtree(workdir, ignore_errors=True)


def write_summary(results: Path, summary: dict[str, Any]) -> Path:
    path = results / "summary.json"
    path.write_text(json.dumps(summary, indent=2) + "\n")
    return path


@contextmanager
def figure(path: Path, title: str, x_label: str, y_label: str, legend: str) -> Iterator[Any]:
    """Yield the axes of a 10x5 inch figure, saved as a PNG at ``path`` once drawn."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    drawing, axis = plt.subplots(figsize=(10, 5))
    try:
        yield axis
        axis.set_xlabel(x_label)
        axis.set_ylabel(y_label)
        axis.set_title(title)
        axis.legend(loc=legend)
        drawing.tight_layout()
        drawing.savefig(path, dpi=100)
    finally:
        plt.close(drawing)
