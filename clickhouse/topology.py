"""The migrations for a topology: one server as written, or a sharded, replicated cluster.

The files in ``clickhouse/migrations`` are written for one server and never edited (their
checksums are recorded). For a cluster each statement is rendered, by these rules:

- a ``*MergeTree`` table ``T`` becomes ``T_local`` with the ``Replicated`` engine of the same
  family and arguments (a ``ReplacingMergeTree(version)`` keeps its version column), one replica
  set per shard, plus ``T`` itself as a ``Distributed`` table over ``T_local``, sharded by
  ``cityHash64(user_id)``: every row of one viewer lives on one shard, so ``FINAL`` on a shard
  sees every copy of that viewer's rows;
- a ``Null`` table is an entry point: the same table on every server, no ``Distributed``;
- a materialized view reading a sharded table reads and writes the local tables (it runs on the
  shard where the rows land); one reading an entry point writes into the ``Distributed`` table,
  which sends each row to its shard;
- every statement carries ``ON CLUSTER``, so one server runs it on all of them.

A statement of another form is refused with a reason rather than guessed at.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass

__all__ = ["LOCAL_SUFFIX", "SHARDING_KEY", "Cluster", "TopologyError", "sharded_tables"]

LOCAL_SUFFIX = "_local"
SHARDING_KEY = "cityHash64(user_id)"
# Keeper path of a shard's replicas of a table; {shard} and {replica} are server macros (the
# Altinity operator defines them for every pod).
_REPLICA_PATH = "/clickhouse/tables/{{shard}}/{database}/{table}"

_CREATE_TABLE = re.compile(
    r"CREATE TABLE IF NOT EXISTS (?P<table>\S+)\s*(?P<columns>.*?)\s*"
    r"ENGINE\s*=\s*(?P<engine>\w+)(?:\((?P<arguments>[^()]*)\))?(?P<rest>.*)",
    re.DOTALL,
)
_CREATE_VIEW = re.compile(
    r"CREATE MATERIALIZED VIEW IF NOT EXISTS (?P<view>\S+) TO (?P<target>\S+) AS(?P<select>.*)",
    re.DOTALL,
)


class TopologyError(Exception):
    """A migration statement has a form the cluster rendering does not know."""


def _table_name(qualified: str) -> str:
    return qualified.rpartition(".")[2]


def sharded_tables(statements: Iterable[str]) -> frozenset[str]:
    """Names of the ``*MergeTree`` tables the statements create: those that get shards."""
    return frozenset(
        _table_name(match["table"])
        for statement in statements
        if (match := _CREATE_TABLE.match(statement)) and match["engine"].endswith("MergeTree")
    )


@dataclass(frozen=True)
class Cluster:
    """A cluster of the server configuration's ``remote_servers`` (the CHI's cluster name)."""

    name: str
    database: str
    sharded: frozenset[str]

    @property
    def on_cluster(self) -> str:
        return f"ON CLUSTER '{self.name}'"

    def render(self, statement: str) -> list[str]:
        """The statements that give the cluster what ``statement`` gives one server."""
        if table := _CREATE_TABLE.match(statement):
            return self._table(table)
        if view := _CREATE_VIEW.match(statement):
            return [self._view(view)]
        raise TopologyError(
            "only CREATE TABLE IF NOT EXISTS … ENGINE = … and CREATE MATERIALIZED VIEW IF NOT"
            f" EXISTS … TO … AS SELECT can be rendered for a cluster, not: {statement[:80]}…"
        )

    def _table(self, match: re.Match[str]) -> list[str]:
        qualified, columns, engine = match["table"], match["columns"], match["engine"]
        if engine == "Null":
            return [
                f"CREATE TABLE IF NOT EXISTS {qualified} {self.on_cluster}\n{columns}\n"
                f"ENGINE = Null{match['rest']}"
            ]
        if not engine.endswith("MergeTree"):
            raise TopologyError(f"{qualified}: no cluster rendering for ENGINE = {engine}")
        if not re.search(r"^\s*\(?\s*user_id\s", columns, re.MULTILINE):
            raise TopologyError(f"{qualified}: no user_id column to shard by")
        table = _table_name(qualified)
        local = f"{self.database}.{table}{LOCAL_SUFFIX}"
        path = _REPLICA_PATH.format(database=self.database, table=f"{table}{LOCAL_SUFFIX}")
        arguments = ", ".join(
            [f"'{path}'", "'{replica}'", *filter(None, [(match["arguments"] or "").strip()])]
        )
        return [
            f"CREATE TABLE IF NOT EXISTS {local} {self.on_cluster}\n{columns}\n"
            f"ENGINE = Replicated{engine}({arguments}){match['rest']}",
            f"CREATE TABLE IF NOT EXISTS {qualified} {self.on_cluster} AS {local}\n"
            f"ENGINE = Distributed('{self.name}', '{self.database}', "
            f"'{table}{LOCAL_SUFFIX}', {SHARDING_KEY})",
        ]

    def _view(self, match: re.Match[str]) -> str:
        select, target = match["select"], match["target"]
        if self._localize(select) != select:  # it reads a sharded table
            select, target = self._localize(select), self._localize(target)
        return (
            f"CREATE MATERIALIZED VIEW IF NOT EXISTS {match['view']} {self.on_cluster}"
            f" TO {target} AS{select}"
        )

    def _localize(self, text: str) -> str:
        for table in sorted(self.sharded):
            text = re.sub(
                rf"\b{re.escape(self.database)}\.{table}\b",
                f"{self.database}.{table}{LOCAL_SUFFIX}",
                text,
            )
        return text
