#!/usr/bin/env bash
# Create the local kind cluster (one node), unless it exists.
set -euo pipefail
# shellcheck source=infra/kind/lib.sh
source "$(dirname "$0")/lib.sh"
require docker kind

if kind get clusters | grep -qx "$CLUSTER_NAME"; then
  echo "kind cluster $CLUSTER_NAME exists"
  exit 0
fi
step "kind cluster $CLUSTER_NAME ($KIND_NODE_IMAGE)"
kind create cluster --name "$CLUSTER_NAME" --image "$KIND_NODE_IMAGE" \
  --config "$REPO_ROOT/infra/kind/cluster.yaml" --wait 2m
