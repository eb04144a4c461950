#!/usr/bin/env bash
# Makes sure the services the tests and benchmarks need are running on this machine:
#   - PostgreSQL on 127.0.0.1:5432 that user `postgres` can reach without a password.
# Starts what is installed but stopped; installs (Debian/Ubuntu, as root) what is missing.
# Fails loudly when it cannot: tests are never skipped for a missing service.
set -euo pipefail

log() { printf '[services] %s\n' "$*" >&2; }
die() { printf '[services] error: %s\n' "$*" >&2; exit 1; }

PG_HOST=127.0.0.1
PG_PORT=5432

pg_ready() {
  if command -v pg_isready >/dev/null 2>&1; then
    pg_isready -q -h "$PG_HOST" -p "$PG_PORT" -U postgres
  else
    (exec 3<>"/dev/tcp/$PG_HOST/$PG_PORT") 2>/dev/null
  fi
}

as_root() {
  if [ "$(id -u)" -eq 0 ]; then "$@"; elif command -v sudo >/dev/null 2>&1; then sudo "$@"; else
    die "need root to run: $* (run as root, or start PostgreSQL yourself and set COGNOMEGA_TEST_PG_URL)"
  fi
}

start_pg_clusters() {
  command -v pg_ctlcluster >/dev/null 2>&1 || return 1
  local version
  for version in $(ls /etc/postgresql 2>/dev/null); do
    log "starting PostgreSQL $version"
    as_root pg_ctlcluster --skip-systemctl-redirect "$version" main start 2>/dev/null || true
  done
}

install_pg() {
  command -v apt-get >/dev/null 2>&1 || die "PostgreSQL is not installed and apt-get is unavailable; install PostgreSQL 15+ and rerun"
  log "installing PostgreSQL from Debian packages"
  as_root apt-get update -qq
  DEBIAN_FRONTEND=noninteractive as_root apt-get install -y -qq postgresql postgresql-client >/dev/null
  # A fresh cluster asks for passwords over TCP; the tests connect as postgres without one,
  # so trust loopback connections (this is a test machine set-up, not a production one).
  local hba
  for hba in /etc/postgresql/*/main/pg_hba.conf; do
    as_root sed -i -E 's/^(host\s+all\s+all\s+(127\.0\.0\.1\/32|::1\/128)\s+)\S+$/\1trust/' "$hba"
  done
  start_pg_clusters
}

ensure_pg() {
  if [ -n "${COGNOMEGA_TEST_PG_URL:-}" ]; then
    log "using COGNOMEGA_TEST_PG_URL for PostgreSQL"
    return 0
  fi
  pg_ready && { log "PostgreSQL is up on $PG_HOST:$PG_PORT"; return 0; }
  start_pg_clusters || true
  for _ in $(seq 1 30); do pg_ready && break; sleep 0.5; done
  if ! pg_ready; then
    install_pg
    for _ in $(seq 1 60); do pg_ready && break; sleep 0.5; done
  fi
  pg_ready || die "PostgreSQL did not come up on $PG_HOST:$PG_PORT"
  log "PostgreSQL is up on $PG_HOST:$PG_PORT"
}

ensure_pg
