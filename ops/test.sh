#!/usr/bin/env bash
# The whole test suite, from a fresh clone on a fresh machine. Sets up what the tests need
# (services, the wasm32 target, s3s-fs, clamd, the voice engines, DuckDB, schemathesis, the edge
# build tools),
# then: formatting, one build of every workspace target that is also the lint pass (clippy
# with warnings as errors), every test against SQLite and PostgreSQL, a schemathesis fuzz of
# the live server, the edge crate's lints for wasm32, and the HTTP acceptance suite against the
# edge shape under workerd (the same suite runs against the native server in the test step).
# Prints each step's duration as it ends and a summary of every step at the end.
# Fails loudly; never skips.
#
# Compiling the same crate graph twice is what made a fresh run slow, so:
#   - clippy is the workspace members' compiler for the one dev build (RUSTC_WORKSPACE_WRAPPER
#     = clippy-driver lints and compiles in one pass): no separate check build of the graph;
#   - the test runner, the doc tests, schemathesis and the edge scripts use that build's
#     artifacts and `cognomega` binary (COGNOMEGA_BIN), with the same environment, so nothing
#     is rebuilt with other features or flags;
#   - tools (s3s-fs, worker-build, wasm-bindgen-cli, wrangler, clamd, clang, Python packages)
#     install in the background at low CPU priority while the build runs, into caches outside
#     the clone (~/.cargo/bin, ~/.cache/cognomega, /var/tmp), so a second run reinstalls nothing;
#   - the edge's release wasm module is reused when its inputs did not change (ops/edge.sh).
#
# Environment: CARGO_TARGET_DIR (default target/), EDGE_TARGET_DIR (default wrangler/target),
# COGNOMEGA_TEST_LOGS (where the background installs log; default a temporary folder).
set -euo pipefail
cd "$(dirname "$0")/.."
root=$(pwd)

run_started=$(date +%s)
step_names=()
step_secs=()
current=""
current_started=0

fmt_secs() { printf '%dm%02ds' $(($1 / 60)) $(($1 % 60)); }

end_step() {
  if [[ -n "$current" ]]; then
    local secs=$(($(date +%s) - current_started))
    step_names+=("$current")
    step_secs+=("$secs")
    printf '<== %s: %s\n' "$current" "$(fmt_secs "$secs")" >&2
    current=""
  fi
}

step() {
  end_step
  current="$*"
  current_started=$(date +%s)
  printf '\n==> %s\n' "$current" >&2
}

summary() {
  local status=$?
  local failed="$current"
  end_step
  local total=$(($(date +%s) - run_started))
  printf '\n==> summary\n' >&2
  local i
  for i in "${!step_names[@]}"; do
    printf '  %8s  %s\n' "$(fmt_secs "${step_secs[$i]}")" "${step_names[$i]}" >&2
  done
  printf '  %8s  total\n' "$(fmt_secs "$total")" >&2
  local job secs rc
  for job in "${!job_pid[@]}"; do
    if [[ -f "$logs/$job.done" ]]; then
      read -r secs rc <"$logs/$job.done"
      printf '  %8s  (in the background) %s%s\n' "$(fmt_secs "$secs")" "$job" \
        "$([[ "$rc" == 0 ]] || echo ", failed: exit $rc")" >&2
    fi
  done
  if ((status != 0)); then
    printf '\nFAILED in step: %s (exit %d)\n' "${failed:-set-up}" "$status" >&2
  fi
  for pid in "${background[@]}"; do kill "$pid" 2>/dev/null || true; done
  if [[ -n "${own_logs:-}" ]]; then rm -rf "$own_logs"; fi
}
background=()
declare -A job_pid=()
trap summary EXIT

logs="${COGNOMEGA_TEST_LOGS:-}"
if [[ -z "$logs" ]]; then
  logs=$(mktemp -d /tmp/cognomega-test-logs.XXXXXX)
  own_logs="$logs"
fi
mkdir -p "$logs"

# A job in the background: its output goes to a log, printed if it fails.
start_job() {
  local name="$1"
  shift
  (
    started=$(date +%s)
    # shellcheck disable=SC2154 # `status` is the trap's own.
    trap 'status=$?; echo "$(($(date +%s) - started)) $status" >"$logs/$name.done"' EXIT
    "$@"
  ) >"$logs/$name.log" 2>&1 &
  job_pid[$name]=$!
  background+=("$!")
}
wait_job() {
  local name="$1" started
  started=$(date +%s)
  if ! wait "${job_pid[$name]}"; then
    printf -- '--- %s failed; its log:\n' "$name" >&2
    cat "$logs/$name.log" >&2
    return 1
  fi
  printf '    (%s ready; waited %s)\n' "$name" "$(fmt_secs $(($(date +%s) - started)))" >&2
}

# The tools, in two jobs. What the tests need: Debian's packages first (apt holds one lock),
# then s3s-fs. What the edge needs: worker-build, wasm-bindgen-cli, wrangler. The cargo-installed
# ones build at the lowest CPU priority, so they take what the foreground leaves idle (linking,
# the lone crates at the end of the graph, tests waiting on I/O) instead of competing with it.
native_tools() {
  ops/clamd.sh --install
  ops/voice.sh --install
  ops/edge.sh apt
  nice -n 19 ops/s3.sh --install
}
edge_tools() {
  while kill -0 "${job_pid[native-tools]}" 2>/dev/null; do sleep 1; done
  nice -n 19 ops/edge.sh tools
}
# Python packages: DuckDB reads the exported Parquet in the export tests; schemathesis lives in
# its own virtualenv.
python_packages() {
  if ! python3 -c 'import duckdb' 2>/dev/null; then
    pip install -q duckdb==2.0.0 || pip install -q --break-system-packages duckdb==2.0.0
  fi
  ops/schemathesis.sh --install
}
# The two release builds the run checks, at the lowest priority while tests run in front: the
# edge's wasm module (ops/edge.sh reuses it when its inputs are unchanged) and the native
# binary whose size is bounded. Each in a target dir of its own, so no cargo lock is shared
# with the foreground.
release_builds() {
  # Built as users build them: no lint wrapper. The native binary first: it needs no tools.
  unset RUSTC_WORKSPACE_WRAPPER CLIPPY_ARGS
  CARGO_TARGET_DIR="$release_target" nice -n 19 cargo build --release --locked --bin cognomega
  while kill -0 "${job_pid[edge-tools]}" 2>/dev/null; do sleep 1; done
  nice -n 19 ops/edge.sh build
}

step "services and set-up (tools install in the background)"
ops/services.sh
if ! rustup target list --installed 2>/dev/null | grep -qx wasm32-unknown-unknown; then
  rustup target add wasm32-unknown-unknown
fi
start_job native-tools native_tools
start_job edge-tools edge_tools
start_job python python_packages

step "cargo fmt --check"
cargo fmt --all -- --check
cargo fmt --manifest-path wrangler/Cargo.toml --all -- --check

# One build of every target (lib, bins, tests, benches, examples) in the dev/test profiles.
# The workspace members compile through clippy-driver with warnings as errors (what
# `cargo clippy --all-targets -- -D warnings` checks); dependencies through plain rustc. Every
# later cargo command in this run sees the same environment, so it reuses these artifacts.
clippy_driver="$(rustc --print sysroot)/bin/clippy-driver"
[[ -x "$clippy_driver" ]] || { echo "clippy-driver is missing: rustup component add clippy" >&2; exit 1; }
export RUSTC_WORKSPACE_WRAPPER="$clippy_driver"
export CLIPPY_ARGS="-D__CLIPPY_HACKERY__warnings__CLIPPY_HACKERY__"
target_dir="${CARGO_TARGET_DIR:-$root/target}"
release_target="$target_dir/release-check"
export COGNOMEGA_BIN="$target_dir/debug/cognomega"

step "build every target, linted (clippy -D warnings as the workspace's compiler)"
cargo build --workspace --all-targets --locked

start_job release-builds release_builds

step "tests (SQLite and PostgreSQL)"
wait_job native-tools
wait_job python
cargo nextest run --workspace --locked --no-fail-fast
cargo test --workspace --locked --doc

step "schemathesis (OpenAPI fuzz against the live server)"
ops/schemathesis.sh

# The lints need the wasm32 target and clang (native-tools), not the edge's build tools.
step "the edge crate's lints (wasm32, clippy -D warnings)"
(
  unset RUSTC_WORKSPACE_WRAPPER CLIPPY_ARGS
  CC_wasm32_unknown_unknown=clang AR_wasm32_unknown_unknown=llvm-ar \
    CARGO_TARGET_DIR="$target_dir/edge-lint" \
    cargo clippy --manifest-path wrangler/Cargo.toml --target wasm32-unknown-unknown --locked -- -D warnings
)

# The module build compiled core/, pipelines/, r2-lifecycle/ and providers/ for wasm32 too.
step "the edge shape under workerd: every Worker up, the HTTP acceptance suite"
wait_job edge-tools
wait_job release-builds
ops/edge.sh test

step "release binary size"
ops/binary-size.sh "$release_target/release/cognomega"

end_step
printf '\n==> all green\n' >&2
