#!/usr/bin/env bash
# Provides pyiso8583 (PyPI), the independent ISO 8583 implementation that
# tests/iso8583_interop.py drives corepay with, and prints the python interpreter to use on its
# last line of stdout. Progress goes to stderr.
#
# Installs into a virtual environment under the cargo target directory
# ($CARGO_TARGET_DIR, else ./target)/pyiso8583-venv, reused when it already has the pinned
# version. If a venv cannot be made (no ensurepip), falls back to
# `pip install --user --break-system-packages`. Any failure exits non-zero with the reason:
# the interop test must fail, never skip.
#
# Usage: scripts/pyiso8583-env.sh   (called by scripts/test.sh and tests/iso8583_interop.rs)
set -euo pipefail
cd "$(dirname "$0")/.."

PIN="pyiso8583==4.0.1"
PY="${PYTHON:-python3}"
TARGET="${CARGO_TARGET_DIR:-$PWD/target}"
VENV="$TARGET/pyiso8583-venv"
say() { echo "pyiso8583-env: $*" >&2; }
die() { say "FAILED: $*"; exit 1; }

command -v "$PY" >/dev/null 2>&1 || die "$PY not found; install Python 3 (3.8 or later)"
mkdir -p "$TARGET"

has_pin() { # python
  "$1" - "$PIN" <<'EOF' >/dev/null 2>&1
import sys
from importlib.metadata import version
import iso8583  # noqa: F401
sys.exit(0 if "pyiso8583==" + version("pyiso8583") == sys.argv[1] else 1)
EOF
}

# One installer at a time: the interop tests of several configurations start together.
exec 9>"$TARGET/pyiso8583-venv.lock"
flock 9

if [ -x "$VENV/bin/python" ] && has_pin "$VENV/bin/python"; then
  say "using $PIN already installed in $VENV"
  echo "$VENV/bin/python"
  exit 0
fi

if rm -rf "$VENV" && "$PY" -m venv "$VENV" >&2; then
  say "installing $PIN from PyPI into $VENV"
  "$VENV/bin/python" -m pip install --disable-pip-version-check --quiet "$PIN" >&2 \
    || die "pip install $PIN into $VENV failed (is PyPI reachable? proxy settings?)"
  has_pin "$VENV/bin/python" || die "$PIN installed into $VENV but does not import"
  say "installed $PIN into $VENV"
  echo "$VENV/bin/python"
  exit 0
fi

say "could not create a venv with $PY -m venv; installing $PIN for the user instead"
rm -rf "$VENV"
if has_pin "$PY"; then
  say "using $PIN already installed for $(command -v "$PY")"
else
  "$PY" -m pip install --disable-pip-version-check --quiet --user --break-system-packages "$PIN" >&2 \
    || "$PY" -m pip install --disable-pip-version-check --quiet --user "$PIN" >&2 \
    || die "pip install --user $PIN failed (is pip installed? is PyPI reachable?)"
  has_pin "$PY" || die "$PIN installed for the user but does not import"
  say "installed $PIN for the user ($PY)"
fi
command -v "$PY"
