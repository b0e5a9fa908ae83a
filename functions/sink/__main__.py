"""The sink as a long-running consumer (the KEDA-scaled deployment): ``python -m functions.sink``.

SIGTERM (Kubernetes stopping the pod, KEDA scaling in) and SIGINT finish the batch in hand,
commit what was stored and leave the consumer group. ``SINK_FAULT_POINT`` and
``SINK_FAULT_SIGNALS`` wrap the store in ``FaultInjectingWriter`` (tests and ``make chaos``).
"""

from __future__ import annotations

import signal
import threading
from types import FrameType

from functions.bootstrap import BATCH_GC_THRESHOLD, start
from functions.runtime import get_store
from functions.settings import Settings
from functions.sink.core import ViewsWriter
from functions.sink.faults import FaultInjectingWriter
from functions.sink.triggers.consumer import BatchConsumer


def _consumer(settings: Settings) -> BatchConsumer:
    writer: ViewsWriter = get_store()
    if settings.sink_fault_point is not None or settings.sink_fault_signals:
        faulty = FaultInjectingWriter(get_store(), settings.sink_fault_point)
        if settings.sink_fault_signals:
            faulty.install_signal_handlers()
        writer = faulty
    return BatchConsumer(settings, writer)


def main() -> None:
    stop = threading.Event()

    def request_stop(_signum: int, _frame: FrameType | None) -> None:
        stop.set()

    signal.signal(signal.SIGTERM, request_stop)
    signal.signal(signal.SIGINT, request_stop)
    start(_consumer, BATCH_GC_THRESHOLD).run(stop)


if __name__ == "__main__":
    main()
