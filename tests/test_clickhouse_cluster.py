"""The migrations rendered for a cluster, checked against the real engine.

No cluster runs here: the engine parses every rendered statement (``formatQuery``), and
``cluster_layout_checks.py`` runs the rest on an embedded engine configured with a two-shard
cluster (a process of its own: one embedded engine per process).
"""

from __future__ import annotations

import os
import subprocess
import sys
import uuid
from pathlib import Path
from typing import Any

import pytest
import yaml
from support import repo_root

from clickhouse.migrate import (
    Migration,
    MigrationError,
    Plan,
    apply_migrations,
    load_migrations,
)
from clickhouse.store import ViewStore
from clickhouse.topology import TopologyError

# The files already applied somewhere: rendering for a cluster must leave them as they are.
APPLIED_CHECKSUMS = {
    1: "090acefb8a83f73387b713afa8244ddc8f4c6101da82bd4a95919d113169dcc6",
    2: "0815926905a32ee0dd421fef256cf3723b95b9102eeac0fb5e0736d31c647b14",
    3: "ebfdba07e5c81e61d43800065c5652ee3cbc8b88d939b8fb45d613a4c6e5324a",
}


def _print(*options: str) -> list[str]:
    """Statements of ``python -m clickhouse.migrate --print``, run with no configuration at all."""
    environment = {"PATH": os.environ["PATH"], "PYTHONPATH": str(repo_root())}
    result = subprocess.run(
        [sys.executable, "-m", "clickhouse.migrate", "--print", *options],
        env=environment,
        cwd=repo_root(),
        capture_output=True,
        text=True,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.endswith("\n;\n")
    return result.stdout.removesuffix("\n;\n").split("\n;\n")


def _parses(store: ViewStore, statement: str) -> bool:
    formatted = store.client.query(
        "SELECT formatQuery({statement:String})", parameters={"statement": statement}
    ).result_rows[0][0]
    return bool(formatted)


def test_applied_migrations_are_unchanged() -> None:
    assert {
        m.version: m.checksum for m in load_migrations() if m.version in APPLIED_CHECKSUMS
    } == APPLIED_CHECKSUMS


def test_print_for_a_cluster_needs_nothing_and_the_engine_parses_every_statement(
    store: ViewStore,
) -> None:
    statements = _print("--cluster", "movies")
    assert all(_parses(store, statement) for statement in statements)
    ddl = [s for s in statements if not s.startswith("INSERT")]
    assert all("ON CLUSTER 'movies'" in statement for statement in ddl)
    created = " ".join(ddl)
    for table, version in (("views", "received_at"), ("latest_view", "event_time")):
        assert (
            f"ENGINE = ReplicatedReplacingMergeTree('/clickhouse/tables/{{shard}}/movies/"
            f"{table}_local', '{{replica}}', {version})" in created
        )
        assert (
            f"ENGINE = Distributed('movies', 'movies', '{table}_local', cityHash64(user_id))"
            in created
        )
    # The views feed the local tables where rows land; the entry point feeds the Distributed one.
    assert "TO movies.latest_view_local AS" in created and "FROM movies.views_local" in created
    assert "canonical_view_lines_mv ON CLUSTER 'movies' TO movies.views AS" in created
    assert "ReplicatedMergeTree('/clickhouse/tables/all/movies/schema_migrations'" in created


def test_print_without_cluster_is_what_a_run_does(store: ViewStore) -> None:
    printed, applied = (f"{kind}_{uuid.uuid4().hex[:8]}" for kind in ("printed", "applied"))
    statements = _print("--database", printed)
    assert not any("ON CLUSTER" in s or "Replicated" in s for s in statements)
    for statement in statements:
        store.client.command(statement)
    apply_migrations(store.client, applied)

    def schema(database: str) -> list[tuple[Any, ...]]:
        tables = store.client.query(
            "SELECT name, engine FROM system.tables WHERE database = {db:String} ORDER BY name",
            parameters={"db": database},
        ).result_rows
        recorded = store.client.query(
            f"SELECT version, name, checksum FROM {database}.schema_migrations ORDER BY version"
        ).result_rows
        return [*tables, *recorded]

    assert schema(printed) == schema(applied)


def test_a_statement_of_unknown_form_is_refused_for_a_cluster() -> None:
    migration = Migration(9, "alter", "ALTER TABLE {database}.views ADD COLUMN x UInt8")
    plan = Plan.make("movies", "movies", [*load_migrations(), migration])
    with pytest.raises(TopologyError, match="only CREATE TABLE"):
        plan.statements(migration)


def test_a_cluster_name_is_an_identifier() -> None:
    with pytest.raises(MigrationError, match="expected a cluster name"):
        Plan.make("movies", "movies' SETTINGS x = 1 --")


def test_a_table_without_the_sharding_column_is_refused_for_a_cluster() -> None:
    migration = Migration(
        9,
        "movies",
        "CREATE TABLE IF NOT EXISTS {database}.titles (movie_id UUID) ENGINE = MergeTree",
    )
    plan = Plan.make("movies", "movies", [*load_migrations(), migration])
    with pytest.raises(TopologyError, match="no user_id column"):
        plan.statements(migration)


def test_the_cluster_layout_runs_on_the_engine(tmp_path: Path) -> None:
    """Schema, claims, reads and the write path's failures on a two-shard configuration."""
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "pytest",
            str(Path(__file__).with_name("cluster_layout_checks.py")),
            "-q",
            "-p",
            "no:cacheprovider",
            f"--basetemp={tmp_path}",
        ],
        cwd=repo_root(),
        capture_output=True,
        text=True,
        check=False,
        timeout=240,
    )
    assert result.returncode == 0, result.stdout[-4000:] + result.stderr[-2000:]
    assert " passed" in result.stdout


def _prod_documents() -> list[dict[str, Any]]:
    kubectl = Path(sys.executable).with_name("kubectl")
    rendered = subprocess.run(
        [str(kubectl), "kustomize", str(repo_root() / "k8s" / "overlays" / "prod")],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    return [document for document in yaml.safe_load_all(rendered) if document]


def test_the_cluster_manifests_agree_with_each_other_and_the_engine_of_the_tests(
    store: ViewStore,
) -> None:
    documents = _prod_documents()
    by_kind = {document["kind"]: document for document in documents}
    installation, keeper = (
        by_kind["ClickHouseInstallation"],
        by_kind["ClickHouseKeeperInstallation"],
    )
    (cluster,) = installation["spec"]["configuration"]["clusters"]
    assert cluster["layout"] == {"shardsCount": 2, "replicasCount": 2}
    (keeper_cluster,) = keeper["spec"]["configuration"]["clusters"]
    assert keeper_cluster["layout"]["replicasCount"] == 3
    # The operator names the Keeper's client service keeper-<name>.
    (node,) = installation["spec"]["configuration"]["zookeeper"]["nodes"]
    assert node == {"host": f"keeper-{keeper['metadata']['name']}", "port": 2181}
    # One name for the cluster: the installation's, the Job's argument, the functions' setting.
    (migrate_job,) = (
        document
        for document in documents
        if document["kind"] == "Job" and document["metadata"]["name"] == "clickhouse-migrate"
    )
    job = migrate_job["spec"]["template"]["spec"]["containers"][0]
    assert job["command"] + job["args"] == [
        "python",
        "-m",
        "clickhouse.migrate",
        "--cluster",
        cluster["name"],
    ]
    (settings,) = (
        document["data"]
        for document in documents
        if document["kind"] == "ConfigMap"
        and document["metadata"]["name"].startswith("watch-progress-settings")
    )
    assert settings["CLICKHOUSE_CLUSTER"] == cluster["name"]
    # Images pinned to the engine version the tests run.
    version = str(store.client.query("SELECT version()").result_rows[0][0])
    engine = ".".join(version.split(".")[:2])
    images = [
        container["image"]
        for document in (installation, keeper)
        for template in document["spec"]["templates"]["podTemplates"]
        for container in template["spec"]["containers"]
    ]
    assert images and all(image.endswith(f":{engine}") for image in images)
    # Our budgets select the operators' pods, and the operators make none of their own.
    budgets = {
        tuple(sorted(d["spec"]["selector"]["matchLabels"].items()))
        for d in documents
        if d["kind"] == "PodDisruptionBudget"
    }
    assert budgets >= {
        (("clickhouse.altinity.com/chi", installation["metadata"]["name"]),),
        (("clickhouse-keeper.altinity.com/chk", keeper["metadata"]["name"]),),
    }
    assert cluster["pdbManaged"] == keeper_cluster["pdbManaged"] == "no"
