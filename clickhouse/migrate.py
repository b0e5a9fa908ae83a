"""Apply the versioned SQL files of ``clickhouse/migrations`` that a database has not had yet.

Files are named ``NNNN_description.sql`` and applied in version order; each applied version is
recorded in ``<database>.schema_migrations`` with the file's checksum, and a recorded file whose
text changed since is an error (write a new migration instead). ``{database}`` in a file is the
target database. Run: ``python -m clickhouse.migrate [--dsn DSN] [--database NAME]``; each
option falls back to ``CLICKHOUSE_DSN`` / ``CLICKHOUSE_DATABASE`` (the names the functions read),
then to the local defaults. It reads nothing else, so it needs no other configuration.
"""

from __future__ import annotations

import argparse
import hashlib
import os
import re
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from clickhouse_connect.driver.client import Client

from clickhouse import DEFAULT_DATABASE, LOCAL_DSN, queries
from clickhouse.store import connect

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
    client.command(queries.CREATE_DATABASE.format(db=database))
    client.command(queries.CREATE_MIGRATIONS_TABLE.format(db=database))
    recorded = {
        int(version): checksum
        for version, checksum in client.query(
            queries.RECORDED_MIGRATIONS.format(db=database)
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
            queries.MIGRATIONS_TABLE.format(db=database),
            [[migration.version, migration.name, migration.checksum]],
            column_names=["version", "name", "checksum"],
        )
        applied.append(migration)
    return applied


def parse_arguments(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m clickhouse.migrate", description=__doc__.split("\n\n")[0]
    )
    parser.add_argument(
        "--dsn",
        default=os.environ.get("CLICKHOUSE_DSN", LOCAL_DSN),
        help="chdb:///<dir> or http(s)://user:password@host:port (env CLICKHOUSE_DSN)",
    )
    parser.add_argument(
        "--database",
        default=os.environ.get("CLICKHOUSE_DATABASE", DEFAULT_DATABASE),
        help="the database to bring up to date (env CLICKHOUSE_DATABASE)",
    )
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> None:
    arguments = parse_arguments(argv)
    applied = apply_migrations(connect(arguments.dsn), arguments.database)
    for migration in applied:
        sys.stdout.write(f"applied {migration.version:04d}_{migration.name}\n")
    sys.stdout.write(f"{arguments.database}: up to date\n")


if __name__ == "__main__":
    main()
