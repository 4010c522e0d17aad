#!/usr/bin/env bash
# Runs the whole corepay test suite: unit tests, black-box tests against the real binary over
# real sockets on real data directories (crash and power-loss tests included), and one pass of
# every criterion benchmark in test mode (to prove they run; figures come from `cargo bench`).
#
# Usage: scripts/test.sh            (from anywhere)
set -euo pipefail
cd "$(dirname "$0")/.."

if ! command -v cargo >/dev/null 2>&1; then
  echo "scripts/test.sh: cargo is not installed; install Rust with rustup first" >&2
  exit 1
fi

# glommio uses io_uring with registered buffers: allow locked memory where we may.
ulimit -l unlimited 2>/dev/null || true

echo "== unit and integration tests"
cargo test --workspace --lib --bins --tests -- --test-threads=2
echo "== benchmarks, one iteration each (test mode)"
cargo test --benches --quiet
