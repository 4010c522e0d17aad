#!/usr/bin/env bash
# Checks systemd/corepay.service offline: systemd-analyze verifies its syntax and rates its
# sandboxing; the exposure must stay at or below MAX_EXPOSURE (issue 11). Installs Debian's
# systemd package (for systemd-analyze) when it is missing and it can; fails loudly when not.
set -euo pipefail
cd "$(dirname "$0")/.."
MAX_EXPOSURE=2.0
UNIT=systemd/corepay.service

say() { echo "check-unit.sh: $*" >&2; }
if ! command -v systemd-analyze >/dev/null 2>&1; then
  if [ "$(id -u)" -eq 0 ]; then AS_ROOT=(); elif sudo -n true 2>/dev/null; then AS_ROOT=(sudo -n); else
    say "systemd-analyze is missing and cannot be installed (need root or password-less sudo)"
    exit 1
  fi
  say "systemd-analyze is missing: running apt-get install -y systemd"
  "${AS_ROOT[@]}" env DEBIAN_FRONTEND=noninteractive apt-get install -y -q systemd >&2 || {
    say "apt-get install systemd failed"
    exit 1
  }
fi
out=$(systemd-analyze security --offline=true "$UNIT" 2>&1) || {
  echo "$out" >&2
  say "systemd-analyze security failed on $UNIT"
  exit 1
}
if echo "$out" | grep -qiE "^.*(unknown (key|lvalue)|failed to parse|invalid)"; then
  echo "$out" | grep -iE "unknown (key|lvalue)|failed to parse|invalid" >&2
  say "$UNIT has settings systemd does not accept"
  exit 1
fi
level=$(echo "$out" | sed -n 's/.*Overall exposure level for [^:]*: \([0-9.]*\).*/\1/p')
if [ -z "$level" ]; then
  echo "$out" >&2
  say "no exposure level in systemd-analyze's answer"
  exit 1
fi
if ! awk -v l="$level" -v m="$MAX_EXPOSURE" 'BEGIN { exit !(l <= m) }'; then
  echo "$out" | grep "✗" >&2
  say "$UNIT exposure $level is above $MAX_EXPOSURE"
  exit 1
fi
echo "   $UNIT: exposure $level (at most $MAX_EXPOSURE)"
