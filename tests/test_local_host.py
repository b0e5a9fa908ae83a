"""`python -m functions.local`, the process `make run` starts, end to end over real HTTP."""

from __future__ import annotations

import os
import subprocess
import sys
import uuid
from pathlib import Path

import httpx
from localkafka import LocalKafka, free_port
from support import JWT_SECRET, bearer, eventually, local_host, repo_root


def test_local_host_serves_ingest_and_sink_and_stops_cleanly(
    kafka: LocalKafka, tmp_path: Path
) -> None:
    user, movie = uuid.uuid4(), uuid.uuid4()
    with local_host(kafka, tmp_path) as host:
        posted = httpx.post(
            f"{host.base}/v1/views",
            json={"movie_id": str(movie), "movie_time_offset": 7_000},
            headers=bearer(user),
        )
        assert posted.status_code == 202, posted.text

        def position() -> dict[str, object] | None:
            response = httpx.get(f"{host.base}/v1/views/{movie}/position", headers=bearer(user))
            return response.json() if response.status_code == 200 else None

        assert eventually(position, timeout=20)["movie_time_offset"] == 7_000
    output = host.log.read_text()
    assert host.returncode == 0, output
    assert '"message":"sink stopped"' in output


def test_a_damaged_clickhouse_folder_is_one_line_naming_it_and_the_remedy(tmp_path: Path) -> None:
    folder = tmp_path / "clickhouse"
    create = (
        "import sys, clickhouse_connect;"
        "c = clickhouse_connect.get_client(dsn=sys.argv[1]);"
        "c.command('CREATE DATABASE movies');"
        "c.command('CREATE TABLE movies.t (x UInt8) ENGINE = MergeTree ORDER BY x')"
    )
    subprocess.run([sys.executable, "-c", create, f"chdb://{folder}"], check=True)
    for definition in (folder / "metadata" / "movies").glob("*.sql"):
        definition.write_text("damaged (((")
    env = {
        **os.environ,
        "KAFKA_BOOTSTRAP_SERVERS": f"127.0.0.1:{free_port()}",
        "CLICKHOUSE_DSN": f"chdb://{folder}",
        "JWT_SECRET": JWT_SECRET,
        "PORT": str(free_port()),
    }
    host = subprocess.run(
        [sys.executable, "-m", "functions.local"],
        cwd=repo_root(),
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert host.returncode == 1
    assert "Traceback" not in host.stdout + host.stderr
    [error] = [line for line in host.stdout.splitlines() if '"log.level":"error"' in line]
    assert str(folder) in error
    assert "`make clean`" in error
