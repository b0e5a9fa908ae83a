"""``make storage-study`` at 100,000 deliveries with all three engines, end to end.

PostgreSQL is installed from Debian's packages if missing (the study does it), never skipped.
Figures are not checked (benchmarks are not tests): only that every engine ran every phase,
gave the same answers, and that the JSON, the plot and the table were written.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from support import run_benchmark

from loadtest.storage.dataset import generate
from loadtest.storage.study import AnswersDiffer, check_answers


def test_the_deliveries_are_out_of_order_and_partly_repeated() -> None:
    data = generate(50_000)
    delivered_times = data.event_time[data.delivery]
    assert (np.diff(delivered_times) < 0).mean() > 0.01
    repeats = len(data.delivery) - len(np.unique(data.delivery))
    assert repeats == len(data.delivery) - len(data.user) > 0
    assert len(data.delivery) == 50_000


def test_a_differing_answer_fails_the_study() -> None:
    same = {"positions": [[1, 2], None], "day_top": {"m": 3}}
    check_answers({"a": same, "b": same})
    with pytest.raises(AnswersDiffer, match=r"a and b disagree at /day_top/m: 3 vs 4"):
        check_answers({"a": same, "b": {**same, "day_top": {"m": 4}}})


# ~20 s of CPU; the bound is for a machine shared with other work.
@pytest.mark.timeout(900)
def test_storage_study_smoke_run_of_all_three_engines(tmp_path: Path) -> None:
    bench = run_benchmark(
        "loadtest.storage",
        tmp_path,
        *("--rows", "100000", "--lookups", "200", "--histories", "20"),
        timeout=840,
    )
    results = bench.results
    assert results["answers_compared"] == ["clickhouse", "postgres", "duckdb"]
    for engine in results["engines"].values():
        assert engine["bulk_insert"]["rows"] + engine["reads_while_inserting"]["rows"] == 100_000
        assert engine["bytes_on_disk"] > 0
        assert engine["reads"]["warm"]["position_ms"]["count"] == 200
    assert "Same answers from clickhouse, postgres, duckdb (checked)." in bench.stdout
