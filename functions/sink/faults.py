"""Fault injection for the reliability tests and ``make chaos``; off unless configured.

``FaultInjectingWriter`` wraps the sink's ``ViewStore``. At a configured fault point it freezes
the consumer loop for good, so that a test can SIGKILL the process exactly there (before the
insert, or after it and before the commit). On request it detaches the ``views`` table, so that
the real engine refuses the inserts that follow, until the table is attached again. The DDL runs
on the consumer thread right before an insert: with the embedded engine only the sink process
can run it, and there it never races an insert.
"""

from __future__ import annotations

import logging
import signal
import threading
from collections.abc import Callable, Sequence
from types import FrameType

from clickhouse import queries
from clickhouse.store import ViewStore
from functions.events import ViewRecord
from functions.settings import SinkFaultPoint

__all__ = ["FAULT_POINT_REACHED", "FaultInjectingWriter"]

log = logging.getLogger(__name__)

FAULT_POINT_REACHED = "fault point reached"


class FaultInjectingWriter:
    """A ``ViewsWriter`` that freezes at ``fault_point`` and can make the engine refuse inserts."""

    def __init__(self, store: ViewStore, fault_point: SinkFaultPoint | None) -> None:
        self._store = store
        self._fault_point = fault_point
        self._views_wanted_detached = False
        self._views_detached = False

    def refuse_inserts(self, refuse: bool) -> None:
        """Detach (True) or attach `views` before the next insert; safe in a signal handler."""
        self._views_wanted_detached = refuse

    def install_signal_handlers(self) -> None:
        """SIGUSR1: refuse inserts from now on; SIGUSR2: accept them again."""

        def refuse(_signum: int, _frame: FrameType | None) -> None:
            self.refuse_inserts(True)

        def accept(_signum: int, _frame: FrameType | None) -> None:
            self.refuse_inserts(False)

        signal.signal(signal.SIGUSR1, refuse)
        signal.signal(signal.SIGUSR2, accept)

    def insert_views(self, records: Sequence[ViewRecord], dedup_token: str) -> None:
        self._insert(lambda: self._store.insert_views(records, dedup_token), dedup_token)

    def insert_canonical_lines(self, lines: bytes, dedup_token: str) -> None:
        self._insert(lambda: self._store.insert_canonical_lines(lines, dedup_token), dedup_token)

    def _insert(self, insert: Callable[[], None], dedup_token: str) -> None:
        self._apply_table_state()
        self._freeze_at("before_insert", dedup_token)
        insert()
        self._freeze_at("after_insert", dedup_token)

    def _apply_table_state(self) -> None:
        wanted = self._views_wanted_detached
        if wanted == self._views_detached:
            return
        self._store.command(queries.DETACH_VIEWS if wanted else queries.ATTACH_VIEWS)
        self._views_detached = wanted
        log.warning("fault injected: views table %s", "detached" if wanted else "attached")

    def _freeze_at(self, point: SinkFaultPoint, dedup_token: str) -> None:
        if self._fault_point != point:
            return
        log.warning(FAULT_POINT_REACHED, extra={"fault_point": point, "dedup_token": dedup_token})
        threading.Event().wait()  # until the test kills the process
