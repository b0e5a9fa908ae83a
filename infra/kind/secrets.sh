#!/usr/bin/env bash
# Create the Secrets the manifests refer to, with random values, unless they exist (ClickHouse
# keeps the password it first started with, so an existing one is never replaced):
#   watch-progress-clickhouse  password   the ClickHouse user "views" (k8s/infra/clickhouse)
#   watch-progress-functions   JWT_SECRET, CLICKHOUSE_DSN, as environment variables of every
#                              function pod (k8s/components/function-pod)
# With OpenFaaS installed, watch-progress-functions is copied to its function namespace.
set -euo pipefail
# shellcheck source=infra/kind/lib.sh
source "$(dirname "$0")/lib.sh"
require python3

random_hex() {
  python3 -c 'import secrets; print(secrets.token_hex(24))'
}

kubectl create namespace "$NAMESPACE" --dry-run=client --output yaml | kubectl apply -f -

if ! kubectl get secret watch-progress-clickhouse --namespace "$NAMESPACE" >/dev/null 2>&1; then
  step "Secrets in $NAMESPACE"
  # Hex: safe inside the DSN's URL without escaping.
  password=$(random_hex)
  kubectl create secret generic watch-progress-clickhouse --namespace "$NAMESPACE" \
    --from-literal=password="$password"
  kubectl create secret generic watch-progress-functions --namespace "$NAMESPACE" \
    --from-literal=JWT_SECRET="$(random_hex)" \
    --from-literal=CLICKHOUSE_DSN="http://views:$password@clickhouse-movies.$NAMESPACE.svc:8123"
fi

if kubectl get namespace openfaas-fn >/dev/null 2>&1; then
  step "Secret watch-progress-functions in openfaas-fn"
  kubectl get secret watch-progress-functions --namespace "$NAMESPACE" --output json \
    | python3 -c 'import json, sys
secret = json.load(sys.stdin)
print(json.dumps({"apiVersion": "v1", "kind": "Secret", "type": secret["type"],
                  "metadata": {"name": secret["metadata"]["name"], "namespace": "openfaas-fn"},
                  "data": secret["data"]}))' \
    | kubectl apply -f -
fi
