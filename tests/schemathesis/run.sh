#!/usr/bin/env bash
# Schemathesis against Herald's own GET /openapi.json, once per token role:
# generated requests (valid and invalid) must get no server error, only
# documented status codes and content types, answers that match their
# schemas, and valid ones must not be refused.
#
# Starts `herald serve` on the embedded default (SQLite in a fresh data
# dir, a known secret), mints a token per role with `herald token`, and
# runs a bounded number of examples per operation (SCHEMATHESIS_EXAMPLES,
# default 10). schemathesis is installed from PyPI into a venv cached
# outside the clone. Usage: [HERALD_BIN=path/to/herald] tests/schemathesis/run.sh
set -euo pipefail
cd "$(dirname "$0")/../.."

VERSION=4.32.5
EXAMPLES="${SCHEMATHESIS_EXAMPLES:-10}"
venv="${XDG_CACHE_HOME:-$HOME/.cache}/herald/schemathesis-$VERSION"
if [ ! -x "$venv/bin/schemathesis" ]; then
  echo "installing schemathesis $VERSION into $venv"
  rm -rf "$venv"
  python3 -m venv "$venv"
  "$venv/bin/pip" install --quiet --disable-pip-version-check "schemathesis==$VERSION"
fi

# HERALD_BIN: a herald binary already built (CI passes the one it tested).
herald="${HERALD_BIN:-}"
if [ -z "$herald" ]; then
  cargo build --quiet -p herald-server
  herald="${CARGO_TARGET_DIR:-target}/debug/herald"
fi

data="$(mktemp -d)"
port="$(python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')"
export HERALD__SERVER__PORT="$port"
export HERALD__SERVER__DATA_DIR="$data"
export HERALD__DATABASE__URL="sqlite://$data/herald.db"
export HERALD__DELIVERY__QUEUE_URL="sqlite://$data/queue.db"
export HERALD__CHANNELS__OUTBOX_DIR="$data/outbox"
export HERALD__AUTH__SECRET="schemathesis-$(od -An -N16 -tx1 /dev/urandom | tr -d ' \n')"
export HERALD__LOG__FILTER="warn"

"$herald" serve >"$data/server.log" 2>&1 &
server=$!
cleanup() {
  kill "$server" 2>/dev/null || true
  wait "$server" 2>/dev/null || true
  rm -rf "$data"
}
trap cleanup EXIT
base="http://127.0.0.1:$port"
for _ in $(seq 100); do
  curl -fsS "$base/healthz" >/dev/null 2>&1 && break
  kill -0 "$server" 2>/dev/null || { cat "$data/server.log" >&2; exit 1; }
  sleep 0.2
done

restaurant="5a6b7c8d-9e0f-4a1b-8c2d-3e4f5a6b7c8d"
failed=0
for role in admin service guest restaurant cashier; do
  sub="schemathesis-$role"
  extra=()
  [ "$role" = restaurant ] || [ "$role" = cashier ] && extra=(--restaurant "$restaurant")
  token="$("$herald" token --role "$role" --sub "$sub" --ttl 2h "${extra[@]}")"
  # A user acts on their own resources: `{user}` is the token's `sub`
  # (services and admins may name anyone, so theirs is generated).
  config="$data/schemathesis-$role.toml"
  if [ "$role" = admin ] || [ "$role" = service ]; then
    : >"$config"
  else
    printf '[parameters]\n"path.user" = "%s"\n' "$sub" >"$config"
  fi
  # `sendAt` must lie in a window around the server's now: a rule on the
  # clock that no schema can state. hooks.py drops such cases, but the
  # coverage phase builds array bodies (a `date-time` of 2000-01-01) that
  # no hook sees, so a schema-valid publish may also answer 422 here.
  cat >>"$config" <<'TOML'
[[operations]]
include-name = "POST /v1/events"
checks.positive_data_acceptance.expected-statuses = ["2xx", "401", "403", "409", "422", "429"]
TOML
  echo "== schemathesis as $role"
  SCHEMATHESIS_HOOKS=hooks PYTHONPATH=tests/schemathesis \
    "$venv/bin/schemathesis" --config-file "$config" run "$base/openapi.json" \
    --header "Authorization: Bearer $token" \
    --checks not_a_server_error,status_code_conformance,content_type_conformance,response_schema_conformance,positive_data_acceptance \
    --phases examples,coverage,fuzzing \
    --max-examples "$EXAMPLES" \
    --seed 7 \
    --workers 1 \
    --no-color ||
    failed=1
done
if [ "$failed" != 0 ]; then
  echo "schemathesis found failures; the server's log:" >&2
  tail -n 50 "$data/server.log" >&2
fi
exit "$failed"
