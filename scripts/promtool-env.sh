#!/usr/bin/env bash
# Prints the path of a `promtool` (Prometheus' own linter for /metrics and alert rules),
# for tests/operations_metrics.rs. Uses one on PATH, else unpacks the promtool of Debian's
# `prometheus` package into target/tools/ (apt-get download + dpkg-deb -x: no root needed,
# and no Prometheus server is installed or started). Fails loudly when neither works.
set -euo pipefail
cd "$(dirname "$0")/.."
say() { echo "promtool-env.sh: $*" >&2; }
if command -v promtool >/dev/null 2>&1; then
  command -v promtool
  exit 0
fi
dir="$PWD/target/tools/prometheus"
bin="$dir/usr/bin/promtool"
if [ -x "$bin" ]; then
  echo "$bin"
  exit 0
fi
if ! command -v apt-get >/dev/null 2>&1 || ! command -v dpkg-deb >/dev/null 2>&1; then
  say "promtool is not installed and apt-get/dpkg-deb are missing: install Prometheus' promtool"
  exit 1
fi
mkdir -p "$dir"
say "promtool not found: unpacking it from Debian's prometheus package into $dir"
( cd "$dir" && apt-get download prometheus >&2 ) || {
  say "apt-get download prometheus failed (run apt-get update?)"
  exit 1
}
dpkg-deb -x "$dir"/prometheus_*.deb "$dir" >&2
rm -f "$dir"/prometheus_*.deb
if [ ! -x "$bin" ]; then
  say "the prometheus package holds no usr/bin/promtool"
  exit 1
fi
echo "$bin"
