#!/usr/bin/env bash
# Property-based fuzzing of the live API against its own OpenAPI document (schemathesis).
#
# Builds `cognomega`, serves it on a temporary data directory (SQLite, consumers on) on a free
# loopback port, mints a guest token, and lets schemathesis generate requests for every
# operation of GET /openapi.json (valid and invalid data) with the bearer token and the admin
# key. It fails on any 5xx and on any response whose status, content type, headers or body does
# not match the document. The server is stopped on exit, whatever happens.
#
#   ops/schemathesis.sh [--seed N] [--max-examples N]
#   ops/schemathesis.sh --install     only set up schemathesis' virtualenv, then exit
#
# Environment: SCHEMATHESIS_SEED (default: a fixed seed, so runs repeat), SCHEMATHESIS_MAX_EXAMPLES
# (default 100 per operation: about a minute on two quiet cores), COGNOMEGA_BIN (a built binary,
# as ops/test.sh passes its test build's; default: `cargo build` and target/debug/cognomega), SCHEMATHESIS_VENV (where schemathesis is
# installed, on Python >= 3.12 when the machine has one; default under ~/.cache/cognomega).
set -euo pipefail
cd "$(dirname "$0")/.."

VERSION=4.32.5
seed="${SCHEMATHESIS_SEED:-20260701}"
max_examples="${SCHEMATHESIS_MAX_EXAMPLES:-100}"
install_only=false
while (($#)); do
  case "$1" in
    --seed) seed="$2"; shift 2 ;;
    --max-examples) max_examples="$2"; shift 2 ;;
    --install) install_only=true; shift ;;
    *) echo "usage: $0 [--install] [--seed N] [--max-examples N]" >&2; exit 2 ;;
  esac
done

# schemathesis lives in its own virtualenv on Python >= 3.12: on 3.11.7 hypothesis' lambda
# descriptions (`ast.parse` deep in a stack) trip CPython's "AST constructor recursion depth
# mismatch" and a whole operation ends as a runtime error of the tool.
venv="${SCHEMATHESIS_VENV:-${XDG_CACHE_HOME:-$HOME/.cache}/cognomega/schemathesis-$VERSION}"
new_enough() { "$1" -c 'import sys; sys.exit(sys.version_info < (3, 12))' 2>/dev/null; }
if [[ ! -x "$venv/bin/st" ]] || ! new_enough "$venv/bin/python"; then
  python=""
  for candidate in python3.13 python3.12 "$HOME"/.pyenv/versions/3.1[2-9]*/bin/python3 python3; do
    if path=$(command -v "$candidate" 2>/dev/null) && new_enough "$path"; then
      python="$path"
      break
    fi
  done
  if [[ -z "$python" ]]; then
    python=$(command -v python3)
    echo "warning: no Python >= 3.12 found; schemathesis runs on $("$python" --version 2>&1)" >&2
  fi
  rm -rf "$venv"
  "$python" -m venv "$venv"
  "$venv/bin/pip" install -q "schemathesis==$VERSION"
fi
st="$venv/bin/st"
if $install_only; then
  echo "schemathesis $("$st" --version 2>&1 | tail -n1) is in $venv" >&2
  exit 0
fi

bin="${COGNOMEGA_BIN:-}"
if [[ -z "$bin" ]]; then
  cargo build --locked --bin cognomega
  bin="${CARGO_TARGET_DIR:-target}/debug/cognomega"
fi

data="$(mktemp -d)"
server=""
provider=""
stop() {
  for pid in $server $provider; do
    kill -TERM "$pid" 2>/dev/null || true
    wait "$pid" 2>/dev/null || true
  done
  rm -rf "$data"
}
trap stop EXIT

# POST /api/si/ask needs a model provider: the loopback stand-in (OpenAI protocol), so the fuzzer
# reaches the route's real answers instead of 503 no_provider_configured. The log files exist
# before the processes start: the readers below may run before a background job's redirection
# has created its file, and a missing file would end the script (set -e).
: >"$data/provider.out"
: >"$data/serve.log"
"$bin" fake-provider >"$data/provider.out" 2>/dev/null &
provider=$!
provider_url=""
for _ in $(seq 1 300); do
  provider_url="$(sed -n 's/.*OPENAI_BASE_URL=\([^ ]*\).*/\1/p' "$data/provider.out")"
  [[ -n "$provider_url" ]] && break
  sleep 0.1
done
if [[ -z "$provider_url" ]]; then
  echo "the fake provider did not start" >&2
  exit 1
fi

admin_key="fuzz-$(od -An -N16 -tx1 /dev/urandom | tr -d ' \n')"
OPENAI_API_KEY=fuzz OPENAI_BASE_URL="$provider_url" COGNOMEGA_PROVIDER_ORDER=openai \
  "$bin" --data-dir "$data" serve --listen 127.0.0.1:0 --admin-key "$admin_key" \
  2>"$data/serve.log" &
server=$!

url=""
for _ in $(seq 1 600); do
  url="$(sed -n 's/^cognomega listening on \([^ ]*\).*/\1/p' "$data/serve.log")"
  [[ -n "$url" ]] && break
  if ! kill -0 "$server" 2>/dev/null; then
    cat "$data/serve.log" >&2
    echo "serve exited before listening" >&2
    exit 1
  fi
  sleep 0.1
done
if [[ -z "$url" ]]; then
  cat "$data/serve.log" >&2
  echo "serve did not listen within 60 s" >&2
  exit 1
fi

token="$(curl -fsS -X POST "$url/auth/guest" |
  python3 -c 'import json, sys; print(json.load(sys.stdin)["token"])')"

echo "schemathesis $("$st" --version 2>&1 | tail -n1) against $url (seed $seed, $max_examples examples per operation)" >&2
status=0
# Run from the temporary directory: schemathesis keeps its example database in the working
# directory, and a fresh one each run keeps a seed's run the same.
(cd "$data" && "$st" run "$url/openapi.json" \
  --checks not_a_server_error,status_code_conformance,content_type_conformance,response_headers_conformance,response_schema_conformance \
  --header "Authorization: Bearer $token" \
  --header "X-Admin-Key: $admin_key" \
  --phases examples,coverage,fuzzing,stateful \
  --max-examples "$max_examples" \
  --seed "$seed" \
  --workers 2 \
  --request-timeout 30 \
  --no-color) || status=$?
if ((status != 0)); then
  echo "--- server log (last 40 lines) ---" >&2
  tail -n 40 "$data/serve.log" >&2
fi
exit "$status"
