#!/usr/bin/env bash
# A real S3-compatible server for tests and local runs: s3s-fs, which serves the S3 API over a
# plain folder (each top-level folder is a bucket).
#
#   ops/s3.sh --install           install s3s-fs into ~/.cargo/bin if missing, then exit
#   ops/s3.sh [PORT] [DATA_DIR]   install if missing, then run it on 127.0.0.1:PORT (default 9014)
#                                 over DATA_DIR (default ./target/s3-data) with the test
#                                 credentials below, in the foreground; Ctrl-C stops it
#
# The object-store conformance tests (stores/tests/object_store_conformance.rs) start their own
# s3s-fs on a free port; they only need `--install` to have run. The version is pinned: newer
# releases need a newer Rust than this workspace's.
set -euo pipefail

S3S_VERSION=0.14.1
ACCESS_KEY=cognomega-test
SECRET_KEY=cognomega-test-secret
BUCKET=cognomega

log() { printf '[s3] %s\n' "$*" >&2; }
die() { printf '[s3] error: %s\n' "$*" >&2; exit 1; }

bin_dir="${CARGO_HOME:-$HOME/.cargo}/bin"
s3s_fs="$bin_dir/s3s-fs"

ensure_installed() {
  if [ -x "$s3s_fs" ] && "$s3s_fs" --version 2>/dev/null | grep -q " $S3S_VERSION\$"; then
    return 0
  fi
  command -v cargo >/dev/null 2>&1 || die "cargo is needed to install s3s-fs $S3S_VERSION"
  log "installing s3s-fs $S3S_VERSION into $bin_dir (takes a few minutes)"
  cargo install s3s-fs --version "$S3S_VERSION" --features binary --locked --force --quiet
  [ -x "$s3s_fs" ] || die "cargo install finished but $s3s_fs is missing"
}

ensure_installed
if [ "${1:-}" = "--install" ]; then
  log "$("$s3s_fs" --version) is at $s3s_fs"
  exit 0
fi

port="${1:-9014}"
data="${2:-target/s3-data}"
mkdir -p "$data/$BUCKET"
log "endpoint http://127.0.0.1:$port  data $data  bucket $BUCKET"
log "COGNOMEGA_S3_ACCESS_KEY_ID=$ACCESS_KEY COGNOMEGA_S3_SECRET_ACCESS_KEY=$SECRET_KEY"
log "objects URL: s3://$BUCKET?endpoint=http://127.0.0.1:$port&region=us-east-1"
echo "http://127.0.0.1:$port"
exec "$s3s_fs" --host 127.0.0.1 --port "$port" \
  --access-key "$ACCESS_KEY" --secret-key "$SECRET_KEY" "$data"
