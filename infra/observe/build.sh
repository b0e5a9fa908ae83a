#!/usr/bin/env bash
# Build what `make observe` runs from Go sources, once, into .local/observe/ (kept across runs):
# the OpenTelemetry Collector (builder v0.161.0, ~1-2 min) and Jaeger v2 (v1.75.0, ~4-5 min,
# ~4 GB of Go caches; v1.76.0 does not build here). Usage: infra/observe/build.sh [collector|jaeger]
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
out=$here/../../.local/observe
PATH=$PATH:/usr/local/go/bin
command -v go >/dev/null || { echo "Go is needed to build the observe stack" >&2; exit 1; }
mkdir -p "$out"

collector() {
    "$here/../otelcol/build.sh" "$out" "$here/builder-config.yaml" >/dev/null
}

jaeger() {
    local binary=$out/jaeger
    if [[ -x $binary ]]; then return; fi
    echo "building Jaeger v1.75.0 (4-5 minutes, more on a busy machine)..."
    # Its go.mod has replace directives, which `go install module@version` refuses: build in
    # the module's own folder of the module cache instead.
    go mod download github.com/jaegertracing/jaeger@v1.75.0
    (cd "$(go env GOMODCACHE)/github.com/jaegertracing/jaeger@v1.75.0" &&
        go build -o "$binary" ./cmd/jaeger)
}

for part in "${@:-collector jaeger}"; do
    # shellcheck disable=SC2086
    for name in $part; do "$name"; done
done
