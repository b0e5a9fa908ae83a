"""The one start-up of every entry point: settings, then logging, then what the process serves,
then the garbage collector.

``functions/main.py`` (the ``ingest`` and ``sink`` targets, in each worker after gunicorn forked
it), ``python -m functions.sink`` and ``python -m functions.local`` all start through ``start``.
Process-wide instrumentation (telemetry, error reporting) belongs in ``_instrument``: it runs
once the logs are configured and before anything it should observe is built.
"""

from __future__ import annotations

import gc
from collections.abc import Callable
from typing import TypeVar

from functions import telemetry
from functions.error_reports import configure_error_reports
from functions.logs import configure_logging
from functions.settings import Settings, get_settings
from functions.telemetry import Process

__all__ = ["BATCH_GC_THRESHOLD", "REQUEST_GC_THRESHOLD", "collect_cycles_rarely", "start"]

# For the functions that serve requests (ingest, and the sink's CloudEvent trigger, one record a
# request): a request frees what it allocates, so 50,000 live new containers are seldom reached;
# at the default (700) one request's transient objects set the collector off.
REQUEST_GC_THRESHOLD = 50_000
# For the consumer loop: a batch is tens of thousands of short-lived, acyclic objects (records,
# events); the collector runs a few times a batch rather than dozens.
BATCH_GC_THRESHOLD = 200_000

Built = TypeVar("Built")


# What this process was set up as, by its first ``start``: ``functions.local`` starts as
# "local" and then builds the ingest target, which starts too.
_set_up_as: list[Process] = []


def start(build: Callable[[Settings], Built], process: Process, gc_threshold: int) -> Built:
    """``build(settings)`` once logging and instrumentation are set up for ``process`` (its
    lines named as its traces are; only by the process's first ``start``); then the collector
    is tuned, so that what was built is frozen out of its scans."""
    settings = get_settings()
    if not _set_up_as:
        configure_logging(settings, telemetry.service_name(process))
        _instrument(settings)
        _set_up_as.append(process)
    built = build(settings)
    collect_cycles_rarely(gc_threshold)
    return built


def _instrument(settings: Settings) -> None:
    """Process-wide instrumentation: OpenTelemetry (its variables checked here, at start), then
    error reports, which tag each event with the current trace."""
    telemetry.check_configuration()
    configure_error_reports(settings)


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
