#!/usr/bin/env bash
# The Cloudflare edge shape, locally: builds the Workers (wrangler/edge → one wasm module) and
# runs all of them together under `wrangler dev` (workerd, with local Queues, KV, R2, Durable
# Objects and Hyperdrive pointed at the local PostgreSQL).
#
#   ops/edge.sh tools        install what the build needs (idempotent; offline-friendly)
#   ops/edge.sh apt          only the Debian packages of `tools` (clang, llvm)
#   ops/edge.sh build        build the module, report its size against Cloudflare's limit
#   ops/edge.sh dev          build, migrate the edge database, run every Worker (foreground)
#   ops/edge.sh test         dev in the background + the HTTP acceptance suite against it
#   ops/edge.sh bench        dev in the background + `cognomega bench edge` (edge vs native)
#
# Environment:
#   COGNOMEGA_EDGE_PORT      gateway port (default 8788; the native server takes 8787)
#   COGNOMEGA_EDGE_DB        PostgreSQL database of `dev` (default cognomega_edge; created).
#                            `test` and `bench` use a database of their own, dropped at the end.
#   PGHOST/PGPORT/PGUSER     the PostgreSQL server (default 127.0.0.1:5432, postgres)
#   COGNOMEGA_ADMIN_KEY      the admin key the local Workers use (default: a fixed dev key)
#   COGNOMEGA_CLAMD          clamd host:port for the av-scan Worker (default 127.0.0.1:3310)
#   EDGE_TARGET_DIR          cargo target dir of the wasm build (default wrangler/target)
#   COGNOMEGA_TOOLS_CACHE    where wrangler's npm install is kept, one per lockfile (default
#                            ~/.cache/cognomega); wrangler/node_modules links to it
#   COGNOMEGA_BIN            a built `cognomega` for migrations and the fake provider (default:
#                            `cargo run --bin cognomega`)
#   CF_ACCOUNT_ID + CF_API_TOKEN (+ CF_AI_BASE_URL), GROQ_API_KEY (+ GROQ_BASE_URL),
#   OPENAI_API_KEY (+ OPENAI_BASE_URL), COGNOMEGA_PROVIDER_ORDER
#                            model providers of the `ai` Worker (POST /api/si/ask); with none
#                            of the keys set, `cognomega fake-provider` is started on loopback
#                            and the REST adapters point at it (the Workers AI binding has no
#                            local mode, so the local `ai` config goes without it)
set -euo pipefail
cd "$(dirname "$0")/.."
root=$(pwd)
wr="$root/wrangler"

port="${COGNOMEGA_EDGE_PORT:-8788}"
db="${COGNOMEGA_EDGE_DB:-cognomega_edge}"
pghost="${PGHOST:-127.0.0.1}"
pgport="${PGPORT:-5432}"
pguser="${PGUSER:-postgres}"
admin_key="${COGNOMEGA_ADMIN_KEY:-edge-dev-admin-key-0123456789abcdef}"
clamd="${COGNOMEGA_CLAMD:-127.0.0.1:3310}"
# The wasm build has its own target dir (other target, other profile); native commands keep the
# caller's CARGO_TARGET_DIR.
edge_target="${EDGE_TARGET_DIR:-$wr/target}"

say() { printf '==> %s\n' "$*" >&2; }
die() { printf 'ops/edge.sh: %s\n' "$*" >&2; exit 1; }

# The native binary (migrations, the fake provider): COGNOMEGA_BIN when the caller built one
# (ops/test.sh passes its test build's), else built here. A command, not a function, so a
# background run's pid is the process itself and the cleanup's kill reaches it.
if [ -n "${COGNOMEGA_BIN:-}" ]; then
  [ -x "$COGNOMEGA_BIN" ] || die "COGNOMEGA_BIN=$COGNOMEGA_BIN is not an executable"
  cognomega=("$COGNOMEGA_BIN")
else
  cognomega=(cargo run -q --locked --bin cognomega --)
fi

# Every Worker config, gateway first (the one wrangler dev serves on the port).
configs=(gateway auth billing usage jobs files admin ai usage-writer settlement jobs-image-thumbnail jobs-sketch-to-app jobs-tts-render av-scan etl dlq)

apt_tools() {
  # zstd (the artifact codec) is C: clang compiles it for wasm32.
  if ! command -v clang >/dev/null || ! command -v llvm-ar >/dev/null; then
    say "installing clang and llvm (zstd-sys builds for wasm32 with them)"
    if command -v apt-get >/dev/null; then
      if ! apt-cache show clang >/dev/null 2>&1; then apt-get update -qq; fi
      DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends clang llvm >/dev/null
    else
      die "install clang and llvm-ar, then retry"
    fi
  fi
}

tools() {
  if ! rustup target list --installed 2>/dev/null | grep -qx wasm32-unknown-unknown; then
    say "rustup target add wasm32-unknown-unknown"
    rustup target add wasm32-unknown-unknown
  fi
  apt_tools
  # worker-build must match the `worker` crate's major.minor; wasm-bindgen-cli must match the
  # wasm-bindgen version in wrangler/Cargo.lock exactly.
  local wb_want bindgen_want
  wb_want=$(awk '/^name = "worker"$/ {getline; gsub(/"/, "", $3); print $3}' "$wr/Cargo.lock")
  bindgen_want=$(awk '/^name = "wasm-bindgen"$/ {getline; gsub(/"/, "", $3); print $3}' "$wr/Cargo.lock")
  if [ "$(worker-build --version 2>/dev/null | awk '{print $NF}')" != "$wb_want" ]; then
    say "cargo install worker-build $wb_want"
    CARGO_TARGET_DIR=/var/tmp/cognomega-tools cargo install worker-build --version "$wb_want" --locked
  fi
  if [ "$(wasm-bindgen --version 2>/dev/null | awk '{print $NF}')" != "$bindgen_want" ]; then
    say "cargo install wasm-bindgen-cli $bindgen_want"
    CARGO_TARGET_DIR=/var/tmp/cognomega-tools cargo install wasm-bindgen-cli --version "$bindgen_want"
  fi
  # wrangler (and workerd), binaryen's wasm-opt and esbuild, pinned by wrangler/package-lock.json,
  # installed once per lockfile outside the clone (a fresh clone links to it instead of
  # installing again): wrangler/node_modules is a link to the cached install.
  local digest cache
  digest=$(cat "$wr/package.json" "$wr/package-lock.json" | sha256sum | cut -c1-16)
  cache="${COGNOMEGA_TOOLS_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/cognomega}/wrangler-$digest"
  if [ ! -e "$cache/.complete" ]; then
    say "npm ci (wrangler, binaryen, esbuild) into $cache"
    rm -rf "$cache" && mkdir -p "$cache"
    cp "$wr/package.json" "$wr/package-lock.json" "$cache/"
    (cd "$cache" && npm ci --no-audit --no-fund >/dev/null)
    touch "$cache/.complete"
  fi
  if [ "$(readlink "$wr/node_modules" 2>/dev/null)" != "$cache/node_modules" ]; then
    rm -rf "$wr/node_modules"
    ln -s "$cache/node_modules" "$wr/node_modules"
  fi
}

# A digest of everything the module is built from: the sources of the crates it compiles, the
# manifests and lockfile, the served OpenAPI document, and the tools' versions.
inputs_digest() {
  {
    (cd "$root" && find core pipelines r2-lifecycle providers wrangler/edge \
        -type f -not -path 'wrangler/edge/build/*' -not -path '*/target/*' -print0 \
      | sort -z | xargs -0 sha256sum)
    (cd "$root" && sha256sum Cargo.toml wrangler/Cargo.toml wrangler/Cargo.lock docs/openapi.json)
    rustc --version; worker-build --version 2>/dev/null; wasm-bindgen --version
    "$wr/node_modules/.bin/wasm-opt" --version; "$wr/node_modules/.bin/esbuild" --version
  } | sha256sum | cut -c1-16
}

build() {
  tools
  # wasm-opt alone takes minutes: a module built from the same inputs is reused from the
  # edge target dir (kept across runs, as the wasm build itself is).
  local digest cache
  digest=$(inputs_digest)
  cache="$edge_target/module-cache/$digest"
  if [ -f "$cache/index_bg.wasm" ]; then
    say "the Workers' module is unchanged (inputs $digest): reusing its build"
    rm -rf "$wr/edge/build" && mkdir -p "$wr/edge/build" && cp -R "$cache/." "$wr/edge/build/"
  else
    say "building the Workers' module (release)"
    (
      cd "$wr/edge"
      # Built as `wrangler deploy` builds it, whatever lint wrapper the caller's native build uses.
      unset RUSTC_WORKSPACE_WRAPPER CLIPPY_ARGS
      WASM_BINDGEN_BIN="$(command -v wasm-bindgen)" \
      WASM_OPT_BIN="$wr/node_modules/.bin/wasm-opt" \
      ESBUILD_BIN="$wr/node_modules/.bin/esbuild" \
      CC_wasm32_unknown_unknown=clang AR_wasm32_unknown_unknown=llvm-ar \
      CARGO_TARGET_DIR="$edge_target" \
        worker-build --release
    )
    rm -rf "$edge_target/module-cache" && mkdir -p "$cache" && cp -R "$wr/edge/build/." "$cache/"
  fi
  sizes
}

sizes() {
  local wasm="$wr/edge/build/index_bg.wasm"
  [ -f "$wasm" ] || die "no build at $wasm; run ops/edge.sh build"
  local raw gz limit=$((64 * 1024 * 1024))
  raw=$(stat -c %s "$wasm")
  gz=$(gzip -9 -c "$wasm" | wc -c)
  printf 'edge module: %s bytes (%.2f MiB) uncompressed, %s bytes (%.2f MiB) gzip; limit 64 MiB uncompressed per Worker: %s\n' \
    "$raw" "$(echo "$raw / 1048576" | bc -l)" "$gz" "$(echo "$gz / 1048576" | bc -l)" \
    "$([ "$raw" -lt "$limit" ] && echo OK || echo OVER)"
  printf 'every Worker (%s) deploys this module: %s\n' "${#configs[@]}" "${configs[*]}"
}

database() {
  if ! pg_isready -h "$pghost" -p "$pgport" -q; then
    ops/services.sh
  fi
  if ! psql -h "$pghost" -p "$pgport" -U "$pguser" -d postgres -tAc "SELECT 1 FROM pg_database WHERE datname = '$db'" | grep -q 1; then
    say "creating database $db"
    psql -h "$pghost" -p "$pgport" -U "$pguser" -d postgres -qc "CREATE DATABASE \"$db\""
  fi
  say "migrating $db (migrations/postgres)"
  "${cognomega[@]}" --database-url "postgres://$pguser@$pghost:$pgport/$db" migrate
}

scanner() {
  # The av-scan Worker streams uploads to clamd over TCP: start the project's local one unless
  # COGNOMEGA_CLAMD names another.
  if [ -z "${COGNOMEGA_CLAMD:-}" ]; then
    COGNOMEGA_CLAMD_PORT="${clamd##*:}" ops/clamd.sh >/dev/null
  fi
}

provider_vars=""
providers() {
  # The `ai` Worker's model providers: the caller's, or a loopback fake speaking the OpenAI and
  # Workers AI REST protocols (the native binary's `fake-provider`, built by `database`).
  local v
  if [ -n "${CF_API_TOKEN:-}${GROQ_API_KEY:-}${OPENAI_API_KEY:-}" ]; then
    say "model providers from the environment"
    for v in CF_ACCOUNT_ID CF_API_TOKEN CF_AI_BASE_URL GROQ_API_KEY GROQ_BASE_URL OPENAI_API_KEY OPENAI_BASE_URL COGNOMEGA_PROVIDER_ORDER; do
      if [ -n "${!v:-}" ]; then provider_vars+="$v=${!v}"$'\n'; fi
    done
    return
  fi
  local out line
  out=$(mktemp /tmp/cognomega-fake-provider.XXXXXX)
  fake_out="$out"
  "${cognomega[@]}" fake-provider >"$out" 2>/dev/null &
  fake_pid=$!
  for _ in $(seq 1 600); do
    grep -q "listening" "$out" && break
    kill -0 "$fake_pid" 2>/dev/null || die "cognomega fake-provider exited during start-up"
    sleep 0.5
  done
  line=$(grep "listening" "$out") || die "cognomega fake-provider did not start within 300 s"
  local openai cfai
  openai=$(sed -n 's/.*OPENAI_BASE_URL=\([^ ]*\).*/\1/p' <<<"$line")
  cfai=$(sed -n 's/.*CF_AI_BASE_URL=\([^ ]*\).*/\1/p' <<<"$line")
  [ -n "$openai" ] && [ -n "$cfai" ] || die "unexpected fake-provider output: $line"
  say "model providers: the loopback fake ($cfai, $openai)"
  provider_vars="CF_ACCOUNT_ID=local
CF_API_TOKEN=local-fake-token
CF_AI_BASE_URL=$cfai
OPENAI_API_KEY=local-fake-key
OPENAI_BASE_URL=$openai
"
}

dev_vars() {
  # Local secrets and settings for every Worker (wrangler reads .dev.vars next to each config).
  cat > "$wr/workers/.dev.vars" <<VARS
COGNOMEGA_ADMIN_KEY=$admin_key
COGNOMEGA_LINK_SECRET=$admin_key-links
COGNOMEGA_CLAMD=$clamd
COGNOMEGA_CONFIG_TOML=${COGNOMEGA_CONFIG_TOML:-}
COGNOMEGA_RATE_LIMITS=${COGNOMEGA_RATE_LIMITS:-on}
COGNOMEGA_TEST_FAULTS=${COGNOMEGA_TEST_FAULTS:-}
${provider_vars}
VARS
  mkdir -p "$wr/workers/.local"
  cp "$wr/workers/.dev.vars" "$wr/workers/.local/.dev.vars"
}

local_config() {
  # The config `wrangler dev` runs for Worker $1: the deploy config, or for one declaring the
  # Workers AI binding (which has no local mode) a copy without it, in workers/.local/.
  local src="$wr/workers/$1.toml"
  if grep -q '^\[ai\]$' "$src"; then
    sed -e '/^\[ai\]$/,/^$/d' -e 's#^main = "\.\./#main = "../../#' "$src" > "$wr/workers/.local/$1.toml"
    echo "$wr/workers/.local/$1.toml"
  else
    echo "$src"
  fi
}

run_dev() {
  local state="$1"
  dev_vars
  local args=()
  for c in "${configs[@]}"; do args+=(-c "$(local_config "$c")"); done
  # Hyperdrive's local connection string (a password is required in the URL; trust auth
  # ignores it).
  export CLOUDFLARE_HYPERDRIVE_LOCAL_CONNECTION_STRING_DB="postgres://$pguser:local@$pghost:$pgport/$db"
  export WRANGLER_SEND_METRICS=false
  # Keeps the local stack up when wrangler's local Hyperdrive relay meets a reset socket (see
  # the file); each occurrence is logged with "[edge-guard]".
  export NODE_OPTIONS="${NODE_OPTIONS:+$NODE_OPTIONS }--require $root/ops/edge/node-guard.cjs"
  cd "$wr/workers"
  exec "$wr/node_modules/.bin/wrangler" dev "${args[@]}" \
    --ip 127.0.0.1 --port "$port" --persist-to "$state" --test-scheduled \
    --show-interactive-dev-session=false --log-level "${WRANGLER_LOG:-warn}"
}

wait_healthy() {
  local pid="$1" log="$2"
  for _ in $(seq 1 240); do
    if ! kill -0 "$pid" 2>/dev/null; then
      tail -50 "$log" >&2
      die "wrangler dev exited during start-up (log above)"
    fi
    if curl -fsS "http://127.0.0.1:$port/healthz" >/dev/null 2>&1; then
      return 0
    fi
    sleep 0.5
  done
  tail -50 "$log" >&2
  die "the edge stack did not answer /healthz on port $port within 120 s"
}

throwaway_database() {
  db="cognomega_edge_$1_$$"
  trap_db="$db"
  database
}

drop_database() {
  if [ -n "${trap_db:-}" ]; then
    psql -h "$pghost" -p "$pgport" -U "$pguser" -d postgres -qc "DROP DATABASE IF EXISTS \"$trap_db\" WITH (FORCE)" >/dev/null \
      || say "could not drop the throwaway database $trap_db; drop it by hand"
  fi
}

cleanup() {
  if [ -n "${edge_pid:-}" ]; then
    kill "$edge_pid" 2>/dev/null; pkill -P "$edge_pid" 2>/dev/null; wait "$edge_pid" 2>/dev/null || true
  fi
  if [ -n "${edge_state:-}" ]; then rm -rf "$edge_state"; fi
  if [ -n "${fake_pid:-}" ]; then kill "$fake_pid" 2>/dev/null; wait "$fake_pid" 2>/dev/null || true; fi
  if [ -n "${fake_out:-}" ]; then rm -f "$fake_out"; fi
  drop_database
}

background() {
  local state log
  state=$(mktemp -d /tmp/cognomega-edge-state.XXXXXX)
  log="$state/wrangler.log"
  ( run_dev "$state" ) >"$log" 2>&1 &
  edge_pid=$!
  edge_state="$state"
  say "waiting for the edge stack on 127.0.0.1:$port (log: $log)"
  wait_healthy "$edge_pid" "$log"
  say "edge stack up"
}

cmd="${1:-dev}"
shift || true
trap cleanup EXIT
case "$cmd" in
  apt) apt_tools ;;
  tools) tools ;;
  build) build ;;
  sizes) sizes ;;
  dev)
    build
    database
    scanner
    providers
    state=$(mktemp -d /tmp/cognomega-edge-state.XXXXXX)
    say "serving the gateway on http://127.0.0.1:$port (outbox relay cron: GET /__scheduled?cron=*+*+*+*+*)"
    ( run_dev "$state" )
    ;;
  test)
    build
    throwaway_database test
    scanner
    providers
    # The acceptance suite's rate-limit scenario needs a small bucket, as the native run has.
    export COGNOMEGA_CONFIG_TOML='rate_limits = { guest = { usage = { rate = 1.0, burst = 20 } } }'
    # The fault scenario: the drain after a request whose id starts `fault-drain-` fails, so
    # only a later relay delivers its messages (never set outside the test stack).
    export COGNOMEGA_TEST_FAULTS=drain
    # Every request and every Worker's log line goes to the log (printed on a failure).
    export WRANGLER_LOG="${WRANGLER_LOG:-info}"
    background
    say "HTTP acceptance suite against the edge stack"
    # The suite's host-death scenario writes a stale voice session row into the edge database.
    if ! COGNOMEGA_ACCEPTANCE_URL="http://127.0.0.1:$port" COGNOMEGA_ACCEPTANCE_ADMIN_KEY="$admin_key" \
      COGNOMEGA_ACCEPTANCE_DATABASE_URL="postgres://$pguser@$pghost:$pgport/$db" \
      cargo nextest run --locked --test acceptance --no-fail-fast "$@"; then
      say "the Workers' errors (from $edge_state/wrangler.log):"
      grep -E "ERROR|✘|Uncaught|panicked|edge-guard" "$edge_state/wrangler.log" | tail -60 >&2 || true
      # The whole log outlives the stack's state folder, and its end is printed: what the
      # Workers logged around a failure (requests, consumer deliveries, crons).
      kept="${COGNOMEGA_TEST_LOGS:-/tmp}/cognomega-edge-wrangler.$$.log"
      mkdir -p "$(dirname "$kept")" && cp "$edge_state/wrangler.log" "$kept" \
        && say "the whole wrangler log is kept in $kept; its last 150 lines:"
      tail -150 "$edge_state/wrangler.log" >&2 || true
      exit 1
    fi
    resets=$(grep -c "edge-guard" "$edge_state/wrangler.log" || true)
    if [ "${resets:-0}" -gt 0 ]; then
      say "note: wrangler's local Hyperdrive relay met $resets reset socket(s) (ops/edge/node-guard.cjs kept the stack up)"
    fi
    ;;
  bench)
    build
    throwaway_database bench
    scanner
    providers
    export COGNOMEGA_RATE_LIMITS=off
    background
    cargo run -q --release --locked --features bench --bin cognomega -- bench edge --edge-url "http://127.0.0.1:$port" "$@"
    ;;
  *) die "unknown command $cmd; see the top of ops/edge.sh" ;;
esac
