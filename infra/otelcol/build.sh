#!/usr/bin/env bash
# Build an OpenTelemetry Collector with the collector's builder, once, into a folder kept across
# runs (like the Kafka jars): by default the tests' collector (this folder's builder-config.yaml)
# into .local/otelcol/; `make observe` builds its own config with it too.
# Usage: infra/otelcol/build.sh [output dir] [builder config]   (prints the binary's path)
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
out=${1:-$here/../../.local/otelcol}
config=${2:-$here/builder-config.yaml}
name=$(sed -n 's/^  name: *//p' "$config" | head -n 1)
binary=$out/$name
if [[ -x $binary && $binary -nt $config ]]; then
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
sed "s|output_path: ./build|output_path: $work|" "$config" > "$work/config.yaml"
echo "building the collector $name (about 1-2 minutes)..." >&2
"$out/builder" --config "$work/config.yaml" >&2
mv "$work/$name" "$binary"
echo "$binary"
