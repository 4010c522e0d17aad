#!/usr/bin/env bash
# Makes sure the PostgreSQL and Redis that corepay's replication tests (and users trying the
# sinks) expect are up and answering:
#   PostgreSQL on 127.0.0.1:5432, database `test`, a role (root or postgres) that connects
#              without a password (trust auth for 127.0.0.1);
#   Redis      on 127.0.0.1:6379.
# Already reachable: says so and exits 0. Installed but stopped: starts it. Not installed and we
# are root (or have password-less sudo) with apt-get: installs it (postgresql, redis-server),
# starts it, creates database `test`, role root, and trust auth for local TCP connections.
# Then waits (bounded, ~30 s each) until each answers. Anything still failing: says why on
# stderr and exits 1, so CI fails loudly instead of skipping the tests that need them.
#
# Usage: scripts/services.sh        (from anywhere; every step is reported on stderr)
set -uo pipefail

PG_HOST=127.0.0.1
PG_PORT=5432
PG_DB=test
REDIS_HOST=127.0.0.1
REDIS_PORT=6379
WAIT_SECONDS=30

say() { echo "services.sh: $*" >&2; }
have() { command -v "$1" >/dev/null 2>&1; }

# Commands that need privileges run as root directly, or through password-less sudo.
if [ "$(id -u)" -eq 0 ]; then
  AS_ROOT=()
elif have sudo && sudo -n true 2>/dev/null; then
  AS_ROOT=(sudo -n)
else
  AS_ROOT=(false)
fi
can_root() { [ "${AS_ROOT[0]:-}" != false ]; }
as_root() { "${AS_ROOT[@]}" "$@"; }
as_postgres() {
  if [ "$(id -un)" = postgres ]; then
    "$@"
  elif [ "$(id -u)" -eq 0 ] && have runuser; then
    runuser -u postgres -- "$@"
  else
    as_root -u postgres "$@"
  fi
}

APT_UPDATED=0
apt_install() {
  if ! can_root || ! have apt-get; then
    say "cannot install $*: need root (or password-less sudo) and apt-get"
    return 1
  fi
  if [ "$APT_UPDATED" -eq 0 ]; then
    say "running apt-get update"
    as_root env DEBIAN_FRONTEND=noninteractive apt-get update -q >&2 || {
      say "apt-get update failed"
      return 1
    }
    APT_UPDATED=1
  fi
  say "running apt-get install -y $*"
  as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -q "$@" >&2 || {
    say "apt-get install $* failed"
    return 1
  }
}

# Waits until "$@" succeeds, at most WAIT_SECONDS.
wait_for() {
  local what=$1
  shift
  local deadline=$((SECONDS + WAIT_SECONDS))
  while ! "$@" >/dev/null 2>&1; do
    if [ "$SECONDS" -ge "$deadline" ]; then
      say "$what did not answer within ${WAIT_SECONDS}s"
      return 1
    fi
    sleep 0.5
  done
  say "$what answers"
}

# ---- PostgreSQL ------------------------------------------------------------------------------

pg_accepting() { have pg_isready && pg_isready -q -h "$PG_HOST" -p "$PG_PORT"; }

# The first role that connects to the test database without a password, if any.
PG_ROLE=""
pg_connects() {
  have psql || return 1
  local role
  for role in root postgres; do
    if PGCONNECT_TIMEOUT=5 psql -X -w -q -h "$PG_HOST" -p "$PG_PORT" -U "$role" -d "$PG_DB" \
      -Atc 'select 1' >/dev/null 2>&1; then
      PG_ROLE=$role
      return 0
    fi
  done
  return 1
}

pg_version() { ls /etc/postgresql 2>/dev/null | sort -V | tail -n 1; }

pg_installed() { have pg_ctlcluster && [ -n "$(pg_version)" ]; }

pg_start() {
  local v
  v=$(pg_version)
  if [ ! -d "/etc/postgresql/$v/main" ]; then
    say "PostgreSQL $v has no cluster 'main': creating it (pg_createcluster $v main)"
    as_root pg_createcluster "$v" main >&2 || {
      say "pg_createcluster $v main failed"
      return 1
    }
  fi
  if as_root pg_ctlcluster "$v" main status >/dev/null 2>&1; then
    say "PostgreSQL $v/main is running but not accepting on $PG_HOST:$PG_PORT (yet?)"
    return 0
  fi
  say "starting PostgreSQL: pg_ctlcluster --skip-systemctl-redirect $v main start"
  as_root pg_ctlcluster --skip-systemctl-redirect "$v" main start >&2 || {
    say "pg_ctlcluster $v main start failed (see above; logs in /var/log/postgresql/)"
    return 1
  }
}

# Database `test`, role root, trust auth for local TCP: what the tests connect with.
pg_configure() {
  local v hba
  v=$(pg_version)
  if ! can_root; then
    say "cannot configure PostgreSQL (database $PG_DB, trust auth): need root or password-less sudo"
    return 1
  fi
  hba=$(as_postgres psql -X -At -d postgres -c 'show hba_file' 2>/dev/null) || hba=""
  [ -n "$hba" ] || hba="/etc/postgresql/$v/main/pg_hba.conf"
  if ! as_root grep -Eq '^[[:space:]]*host[[:space:]]+all[[:space:]]+all[[:space:]]+127\.0\.0\.1/32[[:space:]]+trust' "$hba"; then
    say "adding 'host all all 127.0.0.1/32 trust' (and ::1/128) at the top of $hba"
    as_root sed -i '1i host all all 127.0.0.1/32 trust\nhost all all ::1/128 trust' "$hba" || {
      say "could not edit $hba"
      return 1
    }
    say "reloading PostgreSQL $v/main"
    as_root pg_ctlcluster --skip-systemctl-redirect "$v" main reload >&2 || {
      say "pg_ctlcluster $v main reload failed"
      return 1
    }
    sleep 1
  fi
  if [ "$(as_postgres psql -X -At -d postgres -c "select 1 from pg_roles where rolname = 'root'")" != 1 ]; then
    say "creating role root (superuser, login)"
    as_postgres psql -X -q -d postgres -c 'create role root superuser login' >&2 || return 1
  fi
  if [ "$(as_postgres psql -X -At -d postgres -c "select 1 from pg_database where datname = '$PG_DB'")" != 1 ]; then
    say "creating database $PG_DB"
    as_postgres psql -X -q -d postgres -c "create database $PG_DB" >&2 || return 1
  fi
}

ensure_postgres() {
  if pg_accepting && pg_connects; then
    say "PostgreSQL is reachable at $PG_HOST:$PG_PORT (database $PG_DB, role $PG_ROLE, no password)"
    return 0
  fi
  if ! pg_accepting; then
    if pg_installed; then
      say "PostgreSQL is installed ($(pg_version)) but not accepting connections on $PG_HOST:$PG_PORT"
    else
      say "PostgreSQL is not installed: installing it"
      apt_install postgresql || return 1
      pg_installed || {
        say "postgresql installed but no cluster under /etc/postgresql"
        return 1
      }
    fi
    pg_accepting || pg_start || return 1
    if ! have pg_isready; then
      say "pg_isready is missing (package postgresql-client): cannot check PostgreSQL"
      return 1
    fi
    wait_for "PostgreSQL at $PG_HOST:$PG_PORT" pg_isready -q -h "$PG_HOST" -p "$PG_PORT" || return 1
  fi
  if ! pg_connects; then
    say "PostgreSQL accepts connections but no role connects to database $PG_DB without a password: configuring"
    pg_configure || {
      say "configuring PostgreSQL failed"
      return 1
    }
    if ! pg_connects; then
      say "still cannot connect: psql -h $PG_HOST -p $PG_PORT -U root -d $PG_DB says:"
      psql -X -w -h "$PG_HOST" -p "$PG_PORT" -U root -d "$PG_DB" -c 'select 1' 2>&1 | sed 's/^/    /' >&2
      return 1
    fi
  fi
  say "PostgreSQL is reachable at $PG_HOST:$PG_PORT (database $PG_DB, role $PG_ROLE, no password)"
}

# ---- Redis -----------------------------------------------------------------------------------

redis_ping() {
  if have redis-cli; then
    [ "$(redis-cli -h "$REDIS_HOST" -p "$REDIS_PORT" ping 2>/dev/null)" = PONG ]
  else
    # No client: speak the inline protocol over bash's /dev/tcp.
    local reply
    exec 3<>"/dev/tcp/$REDIS_HOST/$REDIS_PORT" 2>/dev/null || return 1
    printf 'PING\r\n' >&3
    IFS= read -r -t 2 reply <&3
    exec 3>&- 3<&-
    [ "${reply%$'\r'}" = "+PONG" ]
  fi
}

redis_start() {
  say "starting Redis: redis-server --daemonize yes on $REDIS_HOST:$REDIS_PORT (no persistence)"
  as_root mkdir -p /var/lib/redis /var/log/redis || {
    say "cannot create /var/lib/redis or /var/log/redis"
    return 1
  }
  as_root redis-server --daemonize yes --bind 127.0.0.1 -::1 --port "$REDIS_PORT" \
    --save "" --appendonly no --dir /var/lib/redis --logfile /var/log/redis/ci.log >&2 || {
    say "redis-server failed to start (see /var/log/redis/ci.log)"
    return 1
  }
}

ensure_redis() {
  if redis_ping; then
    say "Redis is reachable at $REDIS_HOST:$REDIS_PORT"
    return 0
  fi
  if have redis-server; then
    say "Redis is installed but not answering on $REDIS_HOST:$REDIS_PORT"
  else
    say "Redis is not installed: installing it"
    apt_install redis-server || return 1
    # The package may have started its own server already.
    if redis_ping; then
      say "Redis is reachable at $REDIS_HOST:$REDIS_PORT (started by the package)"
      return 0
    fi
  fi
  redis_start || return 1
  if ! wait_for "Redis at $REDIS_HOST:$REDIS_PORT" redis_ping; then
    say "last lines of /var/log/redis/ci.log:"
    tail -n 5 /var/log/redis/ci.log 2>/dev/null | sed 's/^/    /' >&2
    return 1
  fi
  say "Redis is reachable at $REDIS_HOST:$REDIS_PORT"
}

failed=()
ensure_postgres || failed+=("PostgreSQL ($PG_HOST:$PG_PORT, database $PG_DB)")
ensure_redis || failed+=("Redis ($REDIS_HOST:$REDIS_PORT)")
if [ "${#failed[@]}" -gt 0 ]; then
  for f in "${failed[@]}"; do
    say "FAILED: $f is not reachable (reasons above)"
  done
  exit 1
fi
say "all services reachable"
