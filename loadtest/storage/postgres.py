"""A private PostgreSQL 15 server for the study: its own data folder, port and socket.

Debian's package provides the binaries (installed with apt-get when missing, as ``make bench``
does for ``wrk``). ``initdb`` refuses to run as root, so the server runs as ``postgres``, which
must own the data folder and the log.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

__all__ = ["BIN", "PostgresServer", "ensure_installed"]

BIN = Path("/usr/lib/postgresql/15/bin")

# Tuned as for a dedicated ingest box a fraction of this shared machine's size: the working set
# (the key index and the latest-position table) fits in shared buffers; WAL is sized so that
# checkpoints do not run every few batches of a bulk load; commits stay synchronous, because
# the sink commits Kafka offsets once an insert returns.
SETTINGS = {
    "shared_buffers": "1GB",
    "effective_cache_size": "4GB",
    "work_mem": "64MB",
    "maintenance_work_mem": "512MB",
    "max_wal_size": "8GB",
    "checkpoint_timeout": "15min",
    "wal_compression": "lz4",
    "random_page_cost": "1.1",
    "jit": "off",
}


def ensure_installed() -> None:
    """Install Debian's PostgreSQL 15 server binaries if they are missing."""
    if (BIN / "initdb").exists():
        return
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    subprocess.run(["apt-get", "update", "-qq"], check=True, env=env)
    subprocess.run(["apt-get", "install", "-y", "-qq", "postgresql-15"], check=True, env=env)


def _as_postgres(*argv: str) -> list[str]:
    return ["runuser", "-u", "postgres", "--", *argv] if os.geteuid() == 0 else list(argv)


class PostgresServer:
    """``folder`` holds the cluster (``data``), its socket and its log."""

    def __init__(self, folder: Path, port: int) -> None:
        self.folder = folder
        self.port = port
        self.data = folder / "data"
        self.log = folder / "server.log"

    @property
    def conninfo(self) -> str:
        return f"host={self.folder} port={self.port} user=postgres dbname=postgres"

    def initialise(self) -> None:
        self.folder.mkdir(parents=True, exist_ok=True)
        self.folder.chmod(0o755)
        self.log.touch()
        if os.geteuid() == 0:
            shutil.chown(self.folder, "postgres", "postgres")
            shutil.chown(self.log, "postgres", "postgres")
        subprocess.run(
            _as_postgres(str(BIN / "initdb"), "-D", str(self.data), "-A", "trust", "-E", "UTF8"),
            check=True,
            capture_output=True,
        )

    def start(self) -> None:
        options = " ".join(
            [f"-p {self.port}", f"-k {self.folder}", "-c listen_addresses=127.0.0.1"]
            + [f"-c {name}={value}" for name, value in SETTINGS.items()]
        )
        subprocess.run(
            _as_postgres(
                *(str(BIN / "pg_ctl"), "-D", str(self.data), "-l", str(self.log)),
                *("-w", "-o", options, "start"),
            ),
            check=True,
            capture_output=True,
        )

    def stop(self) -> None:
        subprocess.run(
            _as_postgres(str(BIN / "pg_ctl"), "-D", str(self.data), "-m", "fast", "-w", "stop"),
            check=True,
            capture_output=True,
        )

    def pid(self) -> int:
        """The postmaster's process id (first line of ``postmaster.pid``)."""
        return int((self.data / "postmaster.pid").read_text().split()[0])
