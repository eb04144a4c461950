#!/usr/bin/env bash
# The whole test suite, from a fresh clone. Sets up what the tests need first (services,
# toolchain targets, the edge build tools), then: formatting, lints, every test on every
# backend, the wasm32 build of core/, and the HTTP acceptance suite against the edge shape
# under workerd (the same suite runs against the native server in the test step).
# Fails loudly; never skips.
set -euo pipefail
cd "$(dirname "$0")/.."

step() { printf '\n==> %s\n' "$*" >&2; }

step "services"
ops/services.sh
ops/s3.sh --install
ops/clamd.sh --install
# The export tests read the exported files with DuckDB (consumers/tests/etl.rs).
if ! python3 -c 'import duckdb' 2>/dev/null; then
  pip install duckdb==2.0.0 || pip install --break-system-packages duckdb==2.0.0
fi

step "toolchain"
if ! rustup target list --installed 2>/dev/null | grep -qx wasm32-unknown-unknown; then
  rustup target add wasm32-unknown-unknown
fi

step "cargo fmt --check"
cargo fmt --all -- --check
cargo fmt --manifest-path wrangler/Cargo.toml --all -- --check

step "cargo clippy (all targets, warnings are errors)"
cargo clippy --workspace --all-targets --locked -- -D warnings
step "edge tools (wasm-bindgen, worker-build, wrangler)"
ops/edge.sh tools
step "cargo clippy of the edge crate (wasm32, warnings are errors)"
CC_wasm32_unknown_unknown=clang AR_wasm32_unknown_unknown=llvm-ar \
  cargo clippy --manifest-path wrangler/Cargo.toml --target wasm32-unknown-unknown --locked -- -D warnings

step "tests (SQLite and PostgreSQL)"
if cargo nextest --version >/dev/null 2>&1; then
  cargo nextest run --workspace --locked --no-fail-fast
  cargo test --workspace --locked --doc
else
  cargo test --workspace --locked --no-fail-fast
fi

step "schemathesis (OpenAPI fuzz against the live server)"
ops/schemathesis.sh

step "core/ builds for wasm32-unknown-unknown"
cargo build -p cognomega-core --target wasm32-unknown-unknown --locked

step "the edge shape under workerd: build, every Worker up, the HTTP acceptance suite against it"
ops/edge.sh test

step "all green"
