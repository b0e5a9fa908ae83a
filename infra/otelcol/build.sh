#!/usr/bin/env bash
# Build the test collector once into .local/otelcol/ (like the Kafka jars, kept across runs).
# Usage: infra/otelcol/build.sh [output dir]   (prints the binary's path)
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
out=${1:-$here/../../.local/otelcol}
binary=$out/otelcol-watch-progress
if [[ -x $binary && $binary -nt $here/builder-config.yaml ]]; then
    echo "$binary"
    exit 0
fi
PATH=$PATH:/usr/local/go/bin:$(go env GOPATH 2>/dev/null || echo "$HOME/go")/bin
export PATH
command -v go >/dev/null || { echo "Go is needed to build the collector" >&2; exit 1; }
mkdir -p "$out"
GOBIN=$out go install go.opentelemetry.io/collector/cmd/builder@v0.161.0 >&2
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
sed "s|output_path: ./build|output_path: $work|" "$here/builder-config.yaml" > "$work/config.yaml"
echo "building the collector (about 1-2 minutes)..." >&2
"$out/builder" --config "$work/config.yaml" >&2
mv "$work/otelcol-watch-progress" "$binary"
echo "$binary"
