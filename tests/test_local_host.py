"""`python -m functions.local`, the process `make run` starts, end to end over real HTTP."""

from __future__ import annotations

import uuid
from pathlib import Path

import httpx
from localkafka import LocalKafka
from support import bearer, eventually, local_host


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
