#!/usr/bin/env bash
# The release binary's size against its bound: fails when `cognomega` grows past it.
#
#   ops/binary-size.sh [--no-build] [BINARY]
#
# Builds `cargo build --release --bin cognomega` (as the README's first command does) unless
# --no-build or a BINARY is given, then compares the file's size with the bound.
# Environment: COGNOMEGA_MAX_BINARY_BYTES (default 60000000, 60 MB), CARGO_TARGET_DIR.
set -euo pipefail
cd "$(dirname "$0")/.."

bound="${COGNOMEGA_MAX_BINARY_BYTES:-60000000}"
build=true
bin=""
while (($#)); do
  case "$1" in
    --no-build) build=false; shift ;;
    -h|--help) sed -n '2,/^set -euo/p' "$0" | sed -e '$d' -e 's/^# \{0,1\}//'; exit 0 ;;
    -*) echo "unknown option $1 (see --help)" >&2; exit 2 ;;
    *) bin="$1"; build=false; shift ;;
  esac
done
if [[ -z "$bin" ]]; then
  bin="${CARGO_TARGET_DIR:-target}/release/cognomega"
fi
if $build; then
  # The binary users get: no lint wrapper from a caller's test build.
  env -u RUSTC_WORKSPACE_WRAPPER -u CLIPPY_ARGS cargo build --release --locked --bin cognomega
fi
[[ -f "$bin" ]] || { echo "no binary at $bin: build it with cargo build --release" >&2; exit 1; }

size=$(stat -c %s "$bin")
printf 'release binary %s: %s bytes (%.1f MB); bound %s bytes (%.1f MB)\n' \
  "$bin" "$size" "$(echo "$size / 1000000" | bc -l)" "$bound" "$(echo "$bound / 1000000" | bc -l)"
if ((size > bound)); then
  echo "the release binary grew past its bound: find what grew (cargo bloat, or the crates added" >&2
  echo "since the last green run), trim it, or raise COGNOMEGA_MAX_BINARY_BYTES with a reason" >&2
  exit 1
fi
