#!/usr/bin/env bash
# From nothing to a running system on kind: cluster, operators, secrets, image, overlay.
#   infra/kind/up.sh [dev|dev-keda|dev-openfaas]
set -euo pipefail
here=$(dirname "$0")
"$here/create-cluster.sh"
"$here/install-operators.sh"
"$here/secrets.sh"
"$here/deploy.sh" "${1:-dev}"
