"""Validate Kubernetes manifests (and skaffold.yaml) against strict JSON schemas, offline.

Each YAML document is checked against the schema its apiVersion and kind name, found in
``k8s/schemas`` the way kubeconform looks them up:

- ``kubernetes/v<K8S_VERSION>-standalone-strict/<kind>[-<group prefix>]-<version>.json`` for the
  built-in kinds (``deployment-apps-v1.json``, ``service-v1.json``);
- ``crds/<group>/<kind>_<version>.json`` for custom resources and skaffold's ``Config``.

The schemas reject unknown fields. A document whose kind has no schema is an error, never a
silent pass. Check what kustomize renders, not the raw files (a patch is a partial object):

    kubectl kustomize k8s/overlays/dev | python tools/validate_manifests.py -
    python tools/validate_manifests.py skaffold.yaml
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from typing import Any

import yaml
from jsonschema.validators import validator_for

__all__ = ["K8S_VERSION", "SCHEMA_DIR", "ManifestError", "schema_path", "validate_documents"]

K8S_VERSION = "1.34.0"
SCHEMA_DIR = Path(__file__).resolve().parents[1] / "k8s" / "schemas"


@dataclass(frozen=True)
class ManifestError:
    """One reason a document does not pass."""

    document: str
    location: str
    message: str

    def __str__(self) -> str:
        return f"{self.document} at {self.location}: {self.message}"


def schema_path(api_version: str, kind: str, schema_dir: Path = SCHEMA_DIR) -> Path | None:
    """The schema file for a kind, or None when there is none."""
    group, _, version = api_version.rpartition("/")
    kind_name = kind.lower()
    group_suffix = f"-{group.split('.')[0]}" if group else ""
    candidates = [
        schema_dir
        / "kubernetes"
        / f"v{K8S_VERSION}-standalone-strict"
        / f"{kind_name}{group_suffix}-{version}.json"
    ]
    if group:
        candidates.append(schema_dir / "crds" / group / f"{kind_name}_{version}.json")
    return next((path for path in candidates if path.is_file()), None)


@cache
def _validator(path: Path) -> Any:
    schema = json.loads(path.read_text())
    cls = validator_for(schema)
    cls.check_schema(schema)
    return cls(schema)


def _describe(document: dict[str, Any]) -> str:
    metadata = document.get("metadata") or {}
    name = metadata.get("name", "?") if isinstance(metadata, dict) else "?"
    return f"{document.get('apiVersion', '?')} {document.get('kind', '?')} {name}"


def _errors_of(document: Any, schema_dir: Path) -> Iterator[ManifestError]:
    if not isinstance(document, dict):
        yield ManifestError(repr(document)[:60], "/", "a manifest must be a mapping")
        return
    described = _describe(document)
    api_version, kind = document.get("apiVersion"), document.get("kind")
    if not isinstance(api_version, str) or not isinstance(kind, str):
        yield ManifestError(described, "/", "apiVersion and kind are required strings")
        return
    path = schema_path(api_version, kind, schema_dir)
    if path is None:
        yield ManifestError(described, "/", f"no schema for {kind} in {api_version}")
        return
    for error in _validator(path).iter_errors(document):
        location = "/" + "/".join(str(part) for part in error.absolute_path)
        yield ManifestError(described, location, error.message)


def validate_documents(
    documents: Iterable[Any], schema_dir: Path = SCHEMA_DIR
) -> list[ManifestError]:
    """Every error of every document (empty documents of a YAML stream are skipped)."""
    return [
        error
        for document in documents
        if document is not None
        for error in _errors_of(document, schema_dir)
    ]


def _load(sources: list[str]) -> Iterator[Any]:
    for source in sources:
        text = sys.stdin.read() if source == "-" else Path(source).read_text()
        yield from yaml.safe_load_all(text)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("sources", nargs="+", help="YAML files, '-' for standard input")
    parser.add_argument("--schemas", type=Path, default=SCHEMA_DIR, help="schema directory")
    args = parser.parse_args(argv)
    documents = [document for document in _load(args.sources) if document is not None]
    errors = validate_documents(documents, args.schemas)
    for error in errors:
        sys.stderr.write(f"{error}\n")
    sys.stdout.write(f"{len(documents)} documents, {len(errors)} errors\n")
    return 1 if errors else 0


if __name__ == "__main__":
    sys.exit(main())
