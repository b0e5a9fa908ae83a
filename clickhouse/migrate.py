"""Apply the versioned SQL files of ``clickhouse/migrations`` that a database has not had yet.

Files are named ``NNNN_description.sql`` and applied in version order; each applied version is
recorded in ``<database>.schema_migrations`` with the file's checksum, and a recorded file whose
text changed since is an error (write a new migration instead). ``{database}`` in a file is the
target database. Run: ``python -m clickhouse.migrate`` (settings from the environment).
"""

from __future__ import annotations

import hashlib
import re
import sys
from dataclasses import dataclass
from pathlib import Path

from clickhouse_connect.driver.client import Client

__all__ = ["MIGRATIONS_DIR", "Migration", "MigrationError", "apply_migrations", "load_migrations"]

MIGRATIONS_DIR = Path(__file__).resolve().parent / "migrations"
_FILE_NAME = re.compile(r"^(\d{4})_([a-z0-9_]+)\.sql$")


class MigrationError(Exception):
    """The migrations on disk and those recorded in the database disagree."""


@dataclass(frozen=True)
class Migration:
    version: int
    name: str
    sql: str

    @property
    def checksum(self) -> str:
        return hashlib.sha256(self.sql.encode()).hexdigest()

    def statements(self, database: str) -> list[str]:
        text = self.sql.replace("{database}", database)
        body = "\n".join(line for line in text.splitlines() if not line.lstrip().startswith("--"))
        return [statement.strip() for statement in body.split(";") if statement.strip()]


def load_migrations(directory: Path = MIGRATIONS_DIR) -> list[Migration]:
    """The migrations in a directory, by version; a misnamed file or a repeated version fails."""
    migrations: dict[int, Migration] = {}
    for path in sorted(directory.glob("*.sql")):
        match = _FILE_NAME.match(path.name)
        if match is None:
            raise MigrationError(f"{path.name}: expected a name like 0001_create_views.sql")
        version = int(match.group(1))
        if version in migrations:
            raise MigrationError(f"{path.name}: version {version} is used twice")
        migrations[version] = Migration(version, match.group(2), path.read_text())
    return [migrations[v] for v in sorted(migrations)]


def apply_migrations(
    client: Client, database: str, migrations: list[Migration] | None = None
) -> list[Migration]:
    """Bring ``database`` up to date; returns the migrations applied now."""
    migrations = load_migrations() if migrations is None else migrations
    client.command(f"CREATE DATABASE IF NOT EXISTS {database}")
    client.command(
        f"CREATE TABLE IF NOT EXISTS {database}.schema_migrations"
        " (version UInt32, name String, checksum String,"
        "  applied_at DateTime64(3, 'UTC') DEFAULT now64(3))"
        " ENGINE = MergeTree ORDER BY version"
    )
    recorded = {
        int(version): checksum
        for version, checksum in client.query(
            f"SELECT version, checksum FROM {database}.schema_migrations"
        ).result_rows
    }
    applied = []
    for migration in migrations:
        if migration.version in recorded:
            if recorded[migration.version] != migration.checksum:
                raise MigrationError(
                    f"migration {migration.version} ({migration.name}) changed after it was"
                    f" applied to {database}: add a new migration instead"
                )
            continue
        for statement in migration.statements(database):
            client.command(statement)
        client.insert(
            f"{database}.schema_migrations",
            [[migration.version, migration.name, migration.checksum]],
            column_names=["version", "name", "checksum"],
        )
        applied.append(migration)
    return applied


def main() -> None:
    from functions.settings import get_settings
    from functions.store import connect

    settings = get_settings()
    applied = apply_migrations(connect(settings.clickhouse_dsn), settings.clickhouse_database)
    for migration in applied:
        sys.stdout.write(f"applied {migration.version:04d}_{migration.name}\n")
    sys.stdout.write(f"{settings.clickhouse_database}: up to date\n")


if __name__ == "__main__":
    main()
