"""The sink as a long-running consumer (the KEDA-scaled deployment): ``python -m functions.sink``.

SIGTERM (Kubernetes stopping the pod, KEDA scaling in) and SIGINT finish the batch in hand,
commit what was stored and leave the consumer group.
"""

from __future__ import annotations

import signal
import threading
from types import FrameType

from functions.logs import configure_logging
from functions.runtime import get_store
from functions.settings import get_settings
from functions.sink.consumer import BatchConsumer


def main() -> None:
    settings = get_settings()
    configure_logging(settings.log_level)
    stop = threading.Event()

    def request_stop(_signum: int, _frame: FrameType | None) -> None:
        stop.set()

    signal.signal(signal.SIGTERM, request_stop)
    signal.signal(signal.SIGINT, request_stop)
    BatchConsumer(settings, get_store()).run(stop)


if __name__ == "__main__":
    main()
