"""Apply the versioned SQL files of ``clickhouse/migrations`` that a database has not had yet.

Files are named ``NNNN_description.sql`` and applied in version order; each applied version is
recorded in ``<database>.schema_migrations`` with the file's checksum, and a recorded file whose
text changed since is an error (write a new migration instead). ``{database}`` in a file is the
target database. Run: ``python -m clickhouse.migrate [--dsn DSN] [--database NAME]
[--cluster NAME] [--print]``; each option falls back to ``CLICKHOUSE_DSN`` /
``CLICKHOUSE_DATABASE`` / ``CLICKHOUSE_CLUSTER`` (the names the functions read), then to the local
defaults. It reads nothing else, so it needs no other configuration.

``--cluster`` renders the same files for a sharded, replicated cluster (``clickhouse/topology.py``)
and records them in a replicated ``schema_migrations`` where a version is claimed before it runs,
so that two runners cannot both apply it. ``--views-ttl-days N`` then sets how long raw events
are kept (env ``CLICKHOUSE_VIEWS_TTL_DAYS``; 0: forever). ``--print`` connects to nothing: it
writes every statement a run on an empty database would send, each followed by a line ``;``.
"""

from __future__ import annotations

import argparse
import hashlib
import os
import re
import secrets
import socket
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from clickhouse_connect.driver.client import Client

from clickhouse import DEFAULT_DATABASE, LOCAL_DSN, queries
from clickhouse.store import connect
from clickhouse.topology import LOCAL_SUFFIX, Cluster, sharded_tables

__all__ = [
    "MIGRATIONS_DIR",
    "Migration",
    "MigrationError",
    "Plan",
    "apply_migrations",
    "apply_plan",
    "load_migrations",
]

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


@dataclass(frozen=True)
class Plan:
    """The statements that bring a database of a topology up to date, before any is run."""

    database: str
    migrations: list[Migration]
    cluster: Cluster | None
    runner: str

    @classmethod
    def make(
        cls, database: str, cluster: str | None = None, migrations: list[Migration] | None = None
    ) -> Plan:
        migrations = load_migrations() if migrations is None else migrations
        topology = None
        if cluster is not None:
            if not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_-]*", cluster):
                raise MigrationError(f"{cluster!r}: expected a cluster name like movies")
            every_statement = [s for m in migrations for s in m.statements(database)]
            topology = Cluster(cluster, database, sharded_tables(every_statement))
        # Who claims a version on a cluster: readable in schema_migrations, unique per run.
        runner = re.sub(
            r"[^a-z0-9-]", "-", f"{socket.gethostname().lower()}-{secrets.token_hex(4)}"
        )
        return cls(database, migrations, topology, runner)

    def _format(self, statement: str, **values: object) -> str:
        cluster = self.cluster.name if self.cluster else ""
        return statement.format(db=self.database, cluster=cluster, runner=self.runner, **values)

    def preamble(self) -> list[str]:
        """The database and its ``schema_migrations`` table."""
        if self.cluster is None:
            return [
                self._format(queries.CREATE_DATABASE),
                self._format(queries.CREATE_MIGRATIONS_TABLE),
            ]
        return [
            self._format(queries.CREATE_DATABASE_ON_CLUSTER),
            self._format(queries.CREATE_CLUSTER_MIGRATIONS_TABLE),
        ]

    def statements(self, migration: Migration) -> list[str]:
        """The migration's statements for this topology."""
        written = migration.statements(self.database)
        if self.cluster is None:
            return written
        return [rendered for statement in written for rendered in self.cluster.render(statement)]

    def record(self, migration: Migration, statement: str) -> str:
        return self._format(
            statement, version=migration.version, name=migration.name, checksum=migration.checksum
        )

    def applied(self, migration: Migration) -> str:
        """The statement recording ``migration`` as applied."""
        recorded = (
            queries.RECORD_MIGRATION if self.cluster is None else queries.RECORD_CLUSTER_MIGRATION
        )
        return self.record(migration, recorded)

    @property
    def recorded(self) -> str:
        """The query of the applied versions and their checksums."""
        query = (
            queries.RECORDED_MIGRATIONS
            if self.cluster is None
            else queries.RECORDED_CLUSTER_MIGRATIONS
        )
        return query.format(db=self.database)

    @property
    def views_table(self) -> str:
        """The table holding the raw events on each server."""
        return "views" if self.cluster is None else f"views{LOCAL_SUFFIX}"

    def retention(self, days: int) -> str:
        """The statement keeping ``days`` days of raw events (by ``event_time``); 0 keeps all."""
        table = f"{self.database}.{self.views_table}"
        on_cluster = "" if self.cluster is None else f"{self.cluster.on_cluster} "
        if days == 0:
            return queries.VIEWS_WITHOUT_TTL.format(table=table, on_cluster=on_cluster)
        return queries.VIEWS_TTL.format(table=table, on_cluster=on_cluster, days=days)

    def script(self) -> str:
        """Every statement of a run on an empty database, each followed by a line ``;``."""
        statements = list(self.preamble())
        for migration in self.migrations:
            if self.cluster is not None:
                statements.append(self.record(migration, queries.CLAIM_MIGRATION))
            statements += [*self.statements(migration), self.applied(migration)]
        return "".join(f"{statement}\n;\n" for statement in statements)


def apply_migrations(
    client: Client,
    database: str,
    migrations: list[Migration] | None = None,
    cluster: str | None = None,
) -> list[Migration]:
    """Bring ``database`` up to date; returns the migrations applied now."""
    return apply_plan(client, Plan.make(database, cluster, migrations))


def apply_plan(client: Client, plan: Plan) -> list[Migration]:
    """Run ``plan``'s migrations not recorded yet; returns the migrations applied now."""
    for statement in plan.preamble():
        client.command(statement)
    recorded = {
        int(version): checksum for version, checksum in client.query(plan.recorded).result_rows
    }
    applied = []
    for migration in plan.migrations:
        if migration.version in recorded:
            if recorded[migration.version] != migration.checksum:
                raise MigrationError(
                    f"migration {migration.version} ({migration.name}) changed after it was"
                    f" applied to {plan.database}: add a new migration instead"
                )
            continue
        if plan.cluster is not None:
            _claim(client, plan, migration)
        for statement in plan.statements(migration):
            client.command(statement)
        client.command(plan.applied(migration))
        applied.append(migration)
    return applied


def _claim(client: Client, plan: Plan, migration: Migration) -> None:
    """Make this run the one that applies ``migration``, or fail naming the one that does."""
    client.command(plan.record(migration, queries.CLAIM_MIGRATION))
    claims = client.query(
        queries.MIGRATION_CLAIMS.format(db=plan.database, version=migration.version)
    ).result_rows
    if not claims:
        raise MigrationError(
            f"migration {migration.version} ({migration.name}) of {plan.database}: the claim was"
            " dropped as a repeat of a claim deleted since (docs/clickhouse-cluster.md,"
            " 'A new migration')"
        )
    runner, claimed_at = claims[0]
    if runner != plan.runner:
        raise MigrationError(
            f"migration {migration.version} ({migration.name}) of {plan.database} was claimed by"
            f" {runner} at {claimed_at} and is not recorded as applied yet: another run is"
            " applying it (retry later), or it died meanwhile (docs/clickhouse-cluster.md,"
            " 'A new migration')"
        )


def set_retention(client: Client, plan: Plan, days: int) -> bool:
    """Keep ``days`` days of raw events; True when the table's TTL had to change.

    Changing a TTL rewrites the TTL information of every part, so an unchanged one is left alone.
    """
    rows = client.query(
        queries.TABLE_ENGINE, parameters={"db": plan.database, "table": plan.views_table}
    ).result_rows
    current = re.search(r"\bTTL toDateTime\(event_time\) \+ toIntervalDay\((\d+)\)", rows[0][0])
    if (int(current.group(1)) if current else 0) == days:
        return False
    client.command(plan.retention(days))
    return True


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
    parser.add_argument(
        "--cluster",
        default=os.environ.get("CLICKHOUSE_CLUSTER") or None,
        help="render for this cluster of the servers' remote_servers (env CLICKHOUSE_CLUSTER)",
    )
    parser.add_argument(
        "--views-ttl-days",
        type=int,
        default=os.environ.get("CLICKHOUSE_VIEWS_TTL_DAYS"),
        help="keep this many days of raw events (by event_time; 0: all); unset: leave the TTL"
        " as it is (env CLICKHOUSE_VIEWS_TTL_DAYS)",
    )
    parser.add_argument(
        "--print",
        action="store_true",
        dest="print_only",
        help="write the statements instead of running them; connects to nothing",
    )
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> None:
    arguments = parse_arguments(argv)
    plan = Plan.make(arguments.database, arguments.cluster)
    days = arguments.views_ttl_days
    if arguments.print_only:
        retention = [] if days is None else [f"{plan.retention(days)}\n;\n"]
        sys.stdout.write(plan.script() + "".join(retention))
        return
    client = connect(arguments.dsn)
    applied = apply_plan(client, plan)
    for migration in applied:
        sys.stdout.write(f"applied {migration.version:04d}_{migration.name}\n")
    if days is not None and set_retention(client, plan, days):
        sys.stdout.write(f"views: keeps {days or 'all'} days of events\n")
    sys.stdout.write(f"{arguments.database}: up to date\n")


if __name__ == "__main__":
    main()
