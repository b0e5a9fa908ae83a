"""The sink as a long-running consumer (the KEDA-scaled deployment): ``python -m functions.sink``.

SIGTERM (Kubernetes stopping the pod, KEDA scaling in) and SIGINT finish the batch in hand,
commit what was stored and leave the consumer group. ``SINK_FAULT_POINT`` and
``SINK_FAULT_SIGNALS`` wrap the store in ``FaultInjectingWriter`` (tests and ``make chaos``).
"""

from __future__ import annotations

import contextlib
import signal
import threading
from collections.abc import Iterator
from types import FrameType

from functions.bootstrap import BATCH_GC_THRESHOLD, start
from functions.kafka_config import MAX_POLL_INTERVAL_MS
from functions.runtime import get_store
from functions.settings import Settings, get_settings
from functions.sink.core import ViewsWriter
from functions.sink.faults import FaultInjectingWriter
from functions.sink.triggers.consumer import BatchConsumer
from functions.sink.triggers.health import HealthServer


def _consumer(settings: Settings) -> BatchConsumer:
    writer: ViewsWriter = get_store()
    if settings.sink_fault_point is not None or settings.sink_fault_signals:
        faulty = FaultInjectingWriter(get_store(), settings.sink_fault_point)
        if settings.sink_fault_signals:
            faulty.install_signal_handlers()
        writer = faulty
    return BatchConsumer(settings, writer)


@contextlib.contextmanager
def _probes(settings: Settings, consumer: BatchConsumer) -> Iterator[None]:
    """The liveness and readiness server while the loop runs, when ``HEALTH_PORT`` is set."""
    if settings.health_port is None:
        yield
        return
    server = HealthServer(consumer, settings.health_port, stall_seconds=MAX_POLL_INTERVAL_MS / 1000)
    server.start()
    try:
        yield
    finally:
        server.stop()


def main() -> None:
    stop = threading.Event()

    def request_stop(_signum: int, _frame: FrameType | None) -> None:
        stop.set()

    signal.signal(signal.SIGTERM, request_stop)
    signal.signal(signal.SIGINT, request_stop)
    consumer = start(_consumer, "sink", BATCH_GC_THRESHOLD)
    with _probes(get_settings(), consumer):
        consumer.run(stop)


if __name__ == "__main__":
    main()
