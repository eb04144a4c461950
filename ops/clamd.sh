#!/usr/bin/env bash
# A real ClamAV daemon (clamd) for tests and local runs, with the project's own small signature
# database (ops/clamav/cognomega.ndb) instead of ClamAV's downloads, which are not reachable
# here. The database holds the EICAR test string and a project test marker; clamd reports their
# names with `.UNOFFICIAL` appended (e.g. `Cognomega.Test.EICAR.UNOFFICIAL`).
#
#   ops/clamd.sh --install           install Debian's clamav-daemon if `clamd` is missing, then exit
#   ops/clamd.sh [STATE_DIR]         install if missing, start clamd in the background, wait until
#                                    it answers PING, print its two addresses (stdout):
#                                      tcp://127.0.0.1:PORT
#                                      unix:STATE_DIR/clamd.sock
#                                    If our clamd already runs there with the same configuration,
#                                    says so and exits 0; with another configuration, restarts it.
#   ops/clamd.sh --stop [STATE_DIR]  stop the clamd started in STATE_DIR
#
# STATE_DIR (default $COGNOMEGA_CLAMD_DIR, else /tmp/cognomega-clamd) holds clamd.conf, the
# database copy, the pid file, the unix socket, the log and clamd's temporary files.
# Environment:
#   COGNOMEGA_CLAMD_PORT           TCP port on 127.0.0.1 (default 3310)
#   COGNOMEGA_CLAMD_STREAM_MAX     StreamMaxLength, the largest INSTREAM upload (default 100M);
#                                  MaxFileSize follows it, so nothing accepted goes unscanned
#   COGNOMEGA_CLAMD_START_TIMEOUT  seconds to wait for PING (default 60)
#
# The Rust tests (stores/tests/clamd.rs) run this script themselves on a free port with their
# own state dir; they only need clamd installed, which `--install` does.
set -euo pipefail

log() { printf '[clamd] %s\n' "$*" >&2; }
die() { printf '[clamd] error: %s\n' "$*" >&2; exit 1; }

repo="$(cd "$(dirname "$0")/.." && pwd)"
signatures="$repo/ops/clamav/cognomega.ndb"

mode=start
case "${1:-}" in
  --install) mode=install; shift ;;
  --stop) mode=stop; shift ;;
  -h|--help) sed -n '2,/^set -euo/p' "$0" | sed -e '$d' -e 's/^# \{0,1\}//'; exit 0 ;;
  -*) die "unknown option $1 (see --help)" ;;
esac
state="${1:-${COGNOMEGA_CLAMD_DIR:-/tmp/cognomega-clamd}}"
port="${COGNOMEGA_CLAMD_PORT:-3310}"
stream_max="${COGNOMEGA_CLAMD_STREAM_MAX:-100M}"
start_timeout="${COGNOMEGA_CLAMD_START_TIMEOUT:-60}"
pid_file="$state/clamd.pid"
socket="$state/clamd.sock"
log_file="$state/clamd.log"

find_clamd() {
  command -v clamd 2>/dev/null || { [ -x /usr/sbin/clamd ] && echo /usr/sbin/clamd; } || true
}

ensure_installed() {
  [ -n "$(find_clamd)" ] && return 0
  command -v apt-get >/dev/null 2>&1 \
    || die "clamd is missing and there is no apt-get: install ClamAV's clamd yourself"
  local sudo=()
  if [ "$(id -u)" -ne 0 ]; then
    command -v sudo >/dev/null 2>&1 || die "clamd is missing: run this script as root to install it"
    sudo=(sudo)
  fi
  if ! apt-cache show clamav-daemon >/dev/null 2>&1; then
    log "clamav-daemon is not in the package lists: apt-get update"
    "${sudo[@]}" apt-get update -qq
  fi
  log "installing Debian's clamav-daemon"
  # Recommends would pull in the clamav-freshclam updater's friends; we never download signatures.
  DEBIAN_FRONTEND=noninteractive "${sudo[@]}" apt-get install -y -qq --no-install-recommends \
    clamav-daemon >&2
  [ -n "$(find_clamd)" ] || die "apt-get installed clamav-daemon but clamd is not on PATH or in /usr/sbin"
}

# PING over TCP with bash's /dev/tcp: clamd answers `PONG` terminated by NUL (the z-prefix form).
answers_ping() {
  timeout 3 bash -c '
    exec 3<>"/dev/tcp/127.0.0.1/$1" || exit 1
    printf "zPING\0" >&3
    IFS= read -r -d "" reply <&3 || exit 1
    [ "$reply" = PONG ]
  ' ping "$port" 2>/dev/null
}

port_in_use() {
  timeout 3 bash -c 'exec 3<>"/dev/tcp/127.0.0.1/$1"' probe "$port" 2>/dev/null
}

our_pid() {
  local pid
  [ -f "$pid_file" ] || return 1
  pid="$(tr -dc '0-9' <"$pid_file")"
  [ -n "$pid" ] && kill -0 "$pid" 2>/dev/null || return 1
  # A recycled pid must not get a SIGTERM meant for clamd.
  [ "$(cat "/proc/$pid/comm" 2>/dev/null)" = clamd ] || return 1
  echo "$pid"
}

stop() {
  local pid waited=0
  if ! pid="$(our_pid)"; then
    log "no clamd of ours runs in $state"
    rm -f "$pid_file"
    return 0
  fi
  kill -TERM "$pid"
  while kill -0 "$pid" 2>/dev/null; do
    if [ "$waited" -ge 100 ]; then
      log "clamd $pid ignored SIGTERM for 10 s: SIGKILL"
      kill -KILL "$pid" 2>/dev/null || true
      break
    fi
    sleep 0.1
    waited=$((waited + 1))
  done
  rm -f "$pid_file" "$socket"
  log "stopped clamd $pid ($state)"
}

write_config() {
  cat <<EOF
# Written by ops/clamd.sh; rewritten on every start.
DatabaseDirectory $state/db
TCPSocket $port
TCPAddr 127.0.0.1
LocalSocket $socket
LocalSocketMode 660
FixStaleSocket yes
PidFile $pid_file
LogFile $log_file
LogTime yes
TemporaryDirectory $state/tmp
Foreground no
# INSTREAM uploads longer than this are refused with an ERROR reply (never "OK").
StreamMaxLength $stream_max
# A file above MaxFileSize would be skipped and reported OK; keeping it at StreamMaxLength means
# everything clamd accepts is scanned. Whatever still hits a limit (archives that expand past
# MaxScanSize, deep recursion) is reported as Heuristics.Limits.Exceeded.* instead of clean.
MaxFileSize $stream_max
AlertExceedsMax yes
# One tiny database: reloading it side by side costs nothing, but there is nothing to reload.
SelfCheck 0
ConcurrentDatabaseReload no
MaxThreads 8
EOF
  # clamd drops to `User` only when started as root and told to; without it, it stays whoever
  # started it, which owns the state dir: nothing needs root here.
}

case "$mode" in
  install)
    ensure_installed
    log "$("$(find_clamd)" --version) is at $(find_clamd)"
    exit 0
    ;;
  stop)
    stop
    exit 0
    ;;
esac

ensure_installed
clamd="$(find_clamd)"
[ -f "$signatures" ] || die "the signature database $signatures is missing"
mkdir -p "$state/db" "$state/tmp"
state="$(cd "$state" && pwd)"
pid_file="$state/clamd.pid"
socket="$state/clamd.sock"
log_file="$state/clamd.log"
# unix(7): sun_path holds 108 bytes including the NUL.
[ "${#socket}" -lt 108 ] || die "the socket path $socket is too long for a unix socket; use a shorter STATE_DIR"

config="$(write_config)"
if pid="$(our_pid)"; then
  if [ "$config" = "$(cat "$state/clamd.conf" 2>/dev/null)" ] \
    && cmp -s "$signatures" "$state/db/cognomega.ndb" && answers_ping; then
    log "our clamd $pid is already up on 127.0.0.1:$port ($state)"
    printf 'tcp://127.0.0.1:%s\nunix:%s\n' "$port" "$socket"
    exit 0
  fi
  log "our clamd $pid in $state runs another configuration or database: restarting it"
  stop
fi
if port_in_use; then
  if answers_ping; then
    die "a clamd that is not ours (no live pid in $pid_file) answers on 127.0.0.1:$port; stop it or set COGNOMEGA_CLAMD_PORT"
  fi
  die "127.0.0.1:$port is taken by something else; set COGNOMEGA_CLAMD_PORT"
fi

# DatabaseDirectory holds only our database: clamd loads every database file it finds there.
find "$state/db" -mindepth 1 -delete
cp "$signatures" "$state/db/cognomega.ndb"
printf '%s\n' "$config" >"$state/clamd.conf"
: >"$log_file"

log "starting $("$clamd" --version) on 127.0.0.1:$port and $socket ($state)"
# With Foreground no, clamd loads the database, forks, writes the pid file and returns. A
# restart on the port a stopped clamd just closed can find it not yet bindable (clamd then
# exits right after loading): a start that fails is tried again, up to 5 times, 1 s apart.
tries=0
until "$clamd" --config-file="$state/clamd.conf" >>"$log_file" 2>&1 </dev/null; do
  tries=$((tries + 1))
  if [ "$tries" -ge 5 ]; then
    die "clamd failed to start (5 tries); the end of $log_file:
$(tail -n 30 "$log_file")"
  fi
  log "clamd exited while starting (try $tries of 5); starting it again in 1 s"
  sleep 1
done

deadline=$((SECONDS + start_timeout))
until answers_ping; do
  if [ "$SECONDS" -ge "$deadline" ]; then
    die "clamd did not answer PING on 127.0.0.1:$port within ${start_timeout}s; the end of $log_file:
$(tail -n 30 "$log_file")"
  fi
  if [ -f "$pid_file" ] && ! our_pid >/dev/null; then
    die "clamd exited while starting; the end of $log_file:
$(tail -n 30 "$log_file")"
  fi
  sleep 0.1
done
log "clamd $(our_pid || echo '?') is up"
printf 'tcp://127.0.0.1:%s\nunix:%s\n' "$port" "$socket"
