"""Per-process resources, created on first use.

functions-framework imports the function module in the gunicorn master before it forks workers;
a producer or ClickHouse client made there would be shared, broken, by every worker. Each getter
here builds its resource the first time a worker asks for it.
"""

from __future__ import annotations

import gc
from functools import lru_cache

from functions.producer import AsyncProducer
from functions.settings import get_settings
from functions.store import ViewStore

__all__ = ["collect_cycles_rarely", "get_producer", "get_store"]


@lru_cache(maxsize=1)
def get_producer() -> AsyncProducer:
    return AsyncProducer.from_settings(get_settings())


@lru_cache(maxsize=1)
def get_store() -> ViewStore:
    return ViewStore.from_settings(get_settings())


def collect_cycles_rarely(threshold: int) -> None:
    """Freeze the objects made so far out of the cycle collector's scans, and let it run every
    ``threshold`` net allocations of containers instead of 700.

    The collector runs when more containers were allocated than freed since its last run.
    Requests and batches make many short-lived objects that reference counting frees, but at the
    default threshold their transient peak alone set it off: in an ingest worker at c=64 it ran
    ~200 times a second, ~0.75 ms each (~15 % of the worker's CPU, measured with
    ``gc.callbacks``); in the sink it took ~23 % of the CPU (py-spy).
    """
    gc.freeze()
    gc.set_threshold(threshold)
