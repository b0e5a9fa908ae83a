#!/usr/bin/env bash
# Build the image, load it into the kind node and apply an overlay of k8s/overlays:
#   dev (default)   ingest and sink on Knative, the sink fed by the KafkaSource
#   dev-keda        the sink as the consumer loop scaled by KEDA
#   dev-openfaas    ingest as an OpenFaaS Function (OpenFaaS in operator mode, installed by you)
# skaffold (skaffold.yaml) does the same build/load/apply in a loop.
set -euo pipefail
# shellcheck source=infra/kind/lib.sh
source "$(dirname "$0")/lib.sh"
require docker kind
overlay=${1:-dev}
[[ -d "$REPO_ROOT/k8s/overlays/$overlay" ]] || { echo "no overlay k8s/overlays/$overlay" >&2; exit 2; }
if [[ "$overlay" != dev* ]]; then
  # prod pulls a versioned image from a registry and runs three brokers and a ClickHouse cluster.
  echo "$overlay is not for kind: deploy it with skaffold run -p prod (docs/deployment.md)" >&2
  exit 2
fi
if [[ "$overlay" == dev-openfaas ]] && ! kubectl get crd functions.openfaas.com >/dev/null 2>&1; then
  echo "dev-openfaas needs OpenFaaS with its Function CRD (operator mode) in the cluster" >&2
  exit 1
fi

step "image $IMAGE"
docker build --tag "$IMAGE" "$REPO_ROOT"
kind load docker-image "$IMAGE" --name "$CLUSTER_NAME"

step "overlay $overlay"
# A Job cannot be updated in place; deleting it re-runs the migrations with the new image.
kubectl delete job clickhouse-migrate --namespace "$NAMESPACE" --ignore-not-found
kubectl apply --kustomize "$REPO_ROOT/k8s/overlays/$overlay"

step "waiting for Kafka, ClickHouse and the migrations"
kubectl wait kafka/watch-progress --namespace "$NAMESPACE" --for=condition=Ready --timeout=10m
kubectl wait job/clickhouse-migrate --namespace "$NAMESPACE" --for=condition=Complete --timeout=10m
if [[ "$overlay" != dev-openfaas ]]; then
  kubectl wait ksvc/ingest --namespace "$NAMESPACE" --for=condition=Ready --timeout=5m
fi
kubectl get pods --namespace "$NAMESPACE"
