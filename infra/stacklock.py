"""The exclusive lock of a local stack on its data folders, and the one line naming its holder.

    python infra/stacklock.py .local/stack.lock -- rm -rf .local/kafka   # what `make clean` runs

The lock is an ``flock`` on a file: the OS releases it when the last process holding the file
open ends, so a killed run never leaves a stale lock behind, and a broker or function process
that inherited it keeps the folders locked for as long as it lives. The file's text only
describes the holder (pids, addresses) for the message a refused command prints; nothing is
decided from it. Standard library only: ``make clean`` runs this without the virtualenv.
"""

from __future__ import annotations

import fcntl
import json
import os
import subprocess
import sys
import time
from pathlib import Path

__all__ = ["StackBusy", "StackLock"]


class StackBusy(Exception):
    """Another process holds the lock; the message says who and how to stop it."""


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


class StackLock:
    """An exclusive, non-blocking lock on ``path``, held until this process and every process
    that inherited ``fd`` have ended."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._fd: int | None = None
        self._holder: dict[str, object] = {}

    @property
    def fd(self) -> int:
        if self._fd is None:
            raise RuntimeError("the lock is not held")
        return self._fd

    def acquire(self, **holder: object) -> None:
        """Take the lock and record ``holder``, or raise ``StackBusy`` having changed nothing."""
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            raise StackBusy(self._busy_message()) from None
        self._fd = fd
        self.describe(pid=os.getpid(), **holder)

    def describe(self, **holder: object) -> None:
        """Add to what a refused command is told about the holder."""
        self._holder.update(holder)
        text = json.dumps(self._holder).encode()
        os.ftruncate(self.fd, 0)
        os.pwrite(self.fd, text, 0)

    def _busy_message(self) -> str:
        holder: dict[str, object] = {}
        for _ in range(10):  # the holder writes its description right after taking the lock
            try:
                holder = json.loads(self.path.read_text() or "{}")
            except (OSError, ValueError):
                holder = {}
            if holder:
                break
            time.sleep(0.1)
        where = ", ".join(
            f"{label}{holder[name]}"
            for name, label in (("http", ""), ("kafka", "Kafka "))
            if holder.get(name)
        )
        pids = [pid for pid in (holder.get(n) for n in ("pid", "functions", "broker")) if pid]
        living = [pid for pid in pids if isinstance(pid, int) and _alive(pid)]
        if holder.get("pid") in living:
            pid = holder["pid"]
            how = f"stop it with Ctrl-C in its terminal or `kill {pid}`"
        elif living:  # its supervisor was killed; what it started still holds the folders
            pid = living[0]
            how = "stop what is left of it with `kill " + " ".join(map(str, living)) + "`"
        else:
            pid = "unknown"
            how = "stop the process that holds it"
        return (
            f"the local stack is already running on {self.path.parent.resolve()} (pid {pid}"
            + (f", {where}" if where else "")
            + f"): {how}, then try again"
        )


def main() -> int:
    if len(sys.argv) < 4 or sys.argv[2] != "--":
        print("usage: stacklock.py LOCK_FILE -- COMMAND ...", file=sys.stderr)
        return 2
    lock = StackLock(Path(sys.argv[1]))
    try:
        lock.acquire(command=" ".join(sys.argv[3:]))
    except StackBusy as busy:
        print(busy, file=sys.stderr)
        return 1
    return subprocess.run(sys.argv[3:], check=False).returncode


if __name__ == "__main__":
    sys.exit(main())
