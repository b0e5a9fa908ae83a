#!/usr/bin/env bash
# Delete the kind cluster and everything in it.
set -euo pipefail
# shellcheck source=infra/kind/lib.sh
source "$(dirname "$0")/lib.sh"
require kind
kind delete cluster --name "$CLUSTER_NAME"
