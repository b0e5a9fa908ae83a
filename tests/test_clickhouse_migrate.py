"""The migration runner against the real engine."""

from __future__ import annotations

import os
import subprocess
import sys
import uuid
from pathlib import Path

import pytest

from clickhouse.migrate import (
    Migration,
    MigrationError,
    Plan,
    apply_migrations,
    load_migrations,
    set_retention,
)
from clickhouse.store import ViewStore


def test_applies_each_migration_once(store: ViewStore) -> None:
    database = f"migrate_{uuid.uuid4().hex[:8]}"
    first = apply_migrations(store.client, database)
    assert [m.version for m in first] == [m.version for m in load_migrations()]
    assert apply_migrations(store.client, database) == []
    tables = {
        row[0]
        for row in store.client.query(
            "SELECT name FROM system.tables WHERE database = {db:String}",
            parameters={"db": database},
        ).result_rows
    }
    assert {"views", "latest_view", "latest_view_mv", "schema_migrations"} <= tables


def test_changed_applied_migration_is_refused(store: ViewStore) -> None:
    database = f"migrate_{uuid.uuid4().hex[:8]}"
    migrations = load_migrations()
    apply_migrations(store.client, database, migrations)
    edited = [Migration(m.version, m.name, m.sql + "\n-- edited") for m in migrations]
    with pytest.raises(MigrationError, match="changed after it was applied"):
        apply_migrations(store.client, database, edited)


def test_misnamed_file_is_refused(tmp_path: Path) -> None:
    (tmp_path / "create_views.sql").write_text("SELECT 1")
    with pytest.raises(MigrationError, match="expected a name like"):
        load_migrations(tmp_path)


def test_the_cli_reads_only_its_own_options_and_needs_no_function_settings(
    tmp_path: Path,
) -> None:
    # No JWT secret, no Kafka: the runner is its own program (a Kubernetes Job, `make run`).
    environment = {
        name: value
        for name, value in os.environ.items()
        if not name.startswith(("JWT_", "KAFKA_", "CLICKHOUSE_"))
    }
    command = [sys.executable, "-m", "clickhouse.migrate", "--dsn", f"chdb://{tmp_path}"]
    first = subprocess.run(
        [*command, "--database", "cli"], env=environment, capture_output=True, text=True
    )
    assert first.returncode == 0, first.stderr
    versions = [f"{m.version:04d}_{m.name}" for m in load_migrations()]
    assert first.stdout.splitlines() == [*(f"applied {v}" for v in versions), "cli: up to date"]
    # The environment is the fallback of each option.
    again = subprocess.run(
        command, env={**environment, "CLICKHOUSE_DATABASE": "cli"}, capture_output=True, text=True
    )
    assert again.returncode == 0, again.stderr
    assert again.stdout.splitlines() == ["cli: up to date"]


def test_retention_of_raw_events_is_set_changed_and_removed(store: ViewStore) -> None:
    database = f"retention_{uuid.uuid4().hex[:8]}"
    apply_migrations(store.client, database)
    plan = Plan.make(database)

    def ttl() -> str:
        rows = store.client.query(
            "SELECT engine_full FROM system.tables WHERE database = {db:String} AND name = 'views'",
            parameters={"db": database},
        ).result_rows
        return str(rows[0][0])

    assert set_retention(store.client, plan, 400)
    assert "TTL toDateTime(event_time) + toIntervalDay(400)" in ttl()
    assert not set_retention(store.client, plan, 400)  # unchanged: no rewrite of the parts
    assert set_retention(store.client, plan, 30)
    assert "toIntervalDay(30)" in ttl()
    assert set_retention(store.client, plan, 0)
    assert "TTL" not in ttl()
    assert not set_retention(store.client, plan, 0)
