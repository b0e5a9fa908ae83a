"""The sink as a long-running consumer (the KEDA-scaled deployment): ``python -m functions.sink``.

SIGTERM (Kubernetes stopping the pod, KEDA scaling in) and SIGINT finish the batch in hand,
commit what was stored and leave the consumer group. ``SINK_FAULT_POINT`` and
``SINK_FAULT_SIGNALS`` wrap the store in ``FaultInjectingWriter`` (tests and ``make chaos``).
"""

from __future__ import annotations

import signal
import threading
from types import FrameType

from functions.logs import configure_logging
from functions.runtime import collect_cycles_rarely, get_store
from functions.settings import get_settings
from functions.sink.consumer import BatchConsumer
from functions.sink.core import ViewsWriter
from functions.sink.faults import FaultInjectingWriter

_GC_THRESHOLD = 200_000


def main() -> None:
    settings = get_settings()
    configure_logging(settings)
    stop = threading.Event()

    def request_stop(_signum: int, _frame: FrameType | None) -> None:
        stop.set()

    signal.signal(signal.SIGTERM, request_stop)
    signal.signal(signal.SIGINT, request_stop)
    writer: ViewsWriter = get_store()
    if settings.sink_fault_point is not None or settings.sink_fault_signals:
        faulty = FaultInjectingWriter(get_store(), settings.sink_fault_point)
        if settings.sink_fault_signals:
            faulty.install_signal_handlers()
        writer = faulty
    sink = BatchConsumer(settings, writer)
    # A batch is tens of thousands of short-lived, acyclic objects (records, events): the
    # collector runs a few times a batch rather than dozens.
    collect_cycles_rarely(_GC_THRESHOLD)
    sink.run(stop)


if __name__ == "__main__":
    main()
