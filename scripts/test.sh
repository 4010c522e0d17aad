#!/usr/bin/env bash
# Runs the whole corepay test suite: unit tests, black-box tests against the real binary over
# real sockets on real data directories (crash and power-loss tests included), and one pass of
# every criterion benchmark in test mode (to prove they run; figures come from `cargo bench`).
# PostgreSQL (127.0.0.1:5432, database test) and Redis (127.0.0.1:6379) must be reachable:
# scripts/services.sh starts them, or installs them from Debian's packages, and this script
# fails when it cannot (the replication tests are never skipped).
# The ISO 8583 interoperability test drives the gateway with pyiso8583 from PyPI, which this
# script installs first (scripts/pyiso8583-env.sh: a venv under the cargo target directory); if
# that install fails, this script fails: that test is never skipped.
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

echo "== PostgreSQL and Redis (the replication tests use the real ones)"
if ! scripts/services.sh; then
  echo "scripts/test.sh: PostgreSQL or Redis is not reachable (see above); replication cannot be tested" >&2
  exit 1
fi

echo "== pyiso8583 (independent ISO 8583 implementation for tests/iso8583_interop.rs)"
if ! COREPAY_ISO_PYTHON="$(scripts/pyiso8583-env.sh)"; then
  echo "scripts/test.sh: could not install pyiso8583 (see above); the ISO 8583 interop test cannot run" >&2
  exit 1
fi
export COREPAY_ISO_PYTHON
echo "   python for the interop test: $COREPAY_ISO_PYTHON"

echo "== promtool (Prometheus' linter, for tests/operations_metrics.rs)"
if ! COREPAY_PROMTOOL="$(scripts/promtool-env.sh)"; then
  echo "scripts/test.sh: could not find or unpack promtool (see above); /metrics and the alert rules cannot be checked" >&2
  exit 1
fi
export COREPAY_PROMTOOL
echo "   promtool: $COREPAY_PROMTOOL"

echo "== the systemd unit (syntax and sandboxing, offline)"
scripts/check-unit.sh

echo "== unit and integration tests"
cargo test --workspace --lib --bins --tests -- --test-threads=2
echo "== benchmarks, one iteration each (test mode)"
cargo test --benches --quiet

echo "== instructions per authorization (callgrind, in process) against perf/instructions-baseline.json"
if ! command -v valgrind >/dev/null 2>&1; then
  if command -v apt-get >/dev/null 2>&1; then
    echo "   valgrind is missing: installing the Debian package valgrind"
    apt-get install -y -q valgrind >/dev/null || { apt-get update -q >/dev/null && apt-get install -y -q valgrind >/dev/null; } \
      || { echo "scripts/test.sh: could not install valgrind; the instruction-count guard cannot run" >&2; exit 1; }
  else
    echo "scripts/test.sh: valgrind is not installed and apt-get is not available; install valgrind" >&2
    exit 1
  fi
fi
cargo build --release --quiet -p corepay-perf
target/release/corepay-perf instructions

