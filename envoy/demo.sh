#!/usr/bin/env bash
# `make run`: the demo. Starts two echo upstreams and Envoy with keygate, prints curl lines to try,
# and stops everything on Ctrl-C. CONFIG=envoy/examples/<style>.yaml runs a provider example
# instead. With DEMO_SMOKE=1 it runs the printed curl lines itself, checks what each answers, and
# exits (non-zero, saying why, if one did not answer as printed). With DEMO_ATTACH=1 it starts
# nothing: it checks the same lines against a demo already running on those ports (the compose
# harness, envoy/docker-compose.yaml), whose admin token is KEYGATE_ADMIN_TOKEN.
#
# Ports, when the defaults are taken: KEYGATE_PORT (10000, the API), KEYGATE_ADMIN_PORT (9901,
# Envoy's admin), KEYGATE_LIVE_PORT and KEYGATE_SANDBOX_PORT (18080, 18081: the echo upstreams),
# KEYGATE_GATEWAY_PORT (10001: the MLM example's second listener), KEYGATE_SERVICE_PORT and
# KEYGATE_SERVICE_GATEWAY_PORT (18090, 18091: the key service and its listener for Envoy),
# KEYGATE_RATELIMIT_PORT (8082: where envoy/examples/fleet.yaml finds `keygate ratelimit`, which
# you start; the demo does not).
# E.g. KEYGATE_PORT=10100 make run.
#
# From prebuilt binaries, without the toolchain (`make run` builds first; this script does not):
# KEYGATE_BIN (target/release/keygate, or `keygate` on PATH after make install), KEYGATE_WASM
# (target/wasm32-wasip1/release/keygate.wasm) and ENVOY_BIN (.venv/bin/envoy, or envoy on PATH):
#   KEYGATE_BIN=keygate KEYGATE_WASM=/opt/keygate/keygate.wasm ENVOY_BIN=envoy ./envoy/demo.sh
set -euo pipefail
cd "$(dirname "$0")/.."
ENVOY=${ENVOY_BIN:-.venv/bin/envoy}
CONFIG=${CONFIG:-envoy/demo.yaml}
PORT=${KEYGATE_PORT:-10000}
ADMIN_PORT=${KEYGATE_ADMIN_PORT:-9901}
LIVE_PORT=${KEYGATE_LIVE_PORT:-18080}
SANDBOX_PORT=${KEYGATE_SANDBOX_PORT:-18081}
GATEWAY_PORT=${KEYGATE_GATEWAY_PORT:-10001}
SERVICE_PORT=${KEYGATE_SERVICE_PORT:-18090}
SERVICE_GATEWAY_PORT=${KEYGATE_SERVICE_GATEWAY_PORT:-18091}
RATELIMIT_PORT=${KEYGATE_RATELIMIT_PORT:-8082}
KEYGATE=${KEYGATE_BIN:-target/release/keygate}
WASM=${KEYGATE_WASM:-target/wasm32-wasip1/release/keygate.wasm}
LIVE=mlm_live_demo_4cTq9ZrW2yXb7Ke1
SANDBOX=mlm_sandbox_demo_8Hn3Lp5Vx0Qa6Ms2

fail() { echo "keygate demo: $*" >&2; exit 1; }

ENVOY=$(command -v "$ENVOY") || fail "${ENVOY_BIN:-.venv/bin/envoy} is missing: run \`make envoy\` (make run does), or set ENVOY_BIN"
command -v "$KEYGATE" >/dev/null || fail "$KEYGATE is missing: run \`make cli\` (make run does), or set KEYGATE_BIN"
[ -f "$WASM" ] || fail "$WASM is missing: run \`make wasm\` (make run does), or set KEYGATE_WASM"
[ -f "$CONFIG" ] || fail "CONFIG=$CONFIG: no such file (envoy/demo.yaml or envoy/examples/<style>.yaml)"

# Another process on one of the ports would answer in keygate's place (Envoy shares listener
# ports with SO_REUSEPORT, and a readiness check could reach another Envoy's admin): refuse.
is_free() {
  python3 -c 'import socket, sys
s = socket.socket(); s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.bind(("127.0.0.1", int(sys.argv[1])))' "$1" 2>/dev/null
}
need_free() { # PORT WHAT VARIABLE
  is_free "$1" || fail "port $1 ($2) is in use by another process: stop it, or choose another port with $3=<port> (e.g. $3=$(($1 + 1000)) make run)"
}
ATTACH=${DEMO_ATTACH:-}
if [ -z "$ATTACH" ]; then
need_free "$PORT" "the API listener" KEYGATE_PORT
need_free "$ADMIN_PORT" "Envoy's admin" KEYGATE_ADMIN_PORT
need_free "$LIVE_PORT" "the live echo upstream" KEYGATE_LIVE_PORT
need_free "$SANDBOX_PORT" "the sandbox echo upstream" KEYGATE_SANDBOX_PORT
if grep -Eq 'port_value: 10001([^0-9]|$)' "$CONFIG"; then
  need_free "$GATEWAY_PORT" "the second listener" KEYGATE_GATEWAY_PORT
fi
# The key service runs when the config has a cluster for it (the demo does).
with_service=
if grep -Eq 'port_value: 18090([^0-9]|$)' "$CONFIG"; then
  with_service=1
  need_free "$SERVICE_PORT" "the key service" KEYGATE_SERVICE_PORT
  need_free "$SERVICE_GATEWAY_PORT" "the key service's listener for Envoy" KEYGATE_SERVICE_GATEWAY_PORT
fi
else
  with_service=1
  ADMIN_TOKEN=${KEYGATE_ADMIN_TOKEN:?DEMO_ATTACH needs the admin token of the running key service in KEYGATE_ADMIN_TOKEN}
fi

run=$(mktemp -d "${TMPDIR:-/tmp}/keygate-demo.XXXXXX")
pids=()
cleanup() {
  for ((i = ${#pids[@]} - 1; i >= 0; i--)); do kill "${pids[i]}" 2>/dev/null || true; done
  wait 2>/dev/null || true
  rm -rf "$run"
}
trap cleanup EXIT
if [ "${DEMO_SMOKE:-}" = 1 ]; then
  trap 'fail "demo smoke interrupted"' INT TERM
else
  trap 'exit 0' INT TERM # Ctrl-C is how the demo stops, not a failure
fi

# The config on the chosen ports.
rewrite_ports=$(
  cat <<'PY'
import re, sys
src, dst, *pairs = sys.argv[1:]
ports = dict(p.split("=") for p in pairs)
text = open(src).read()
text = re.sub(r"port_value: (\d+)\b", lambda m: "port_value: " + ports.get(m[1], m[1]), text)
wasm = ports.get("wasm")
if wasm:
    text = text.replace("filename: target/wasm32-wasip1/release/keygate.wasm", "filename: " + wasm)
open(dst, "w").write(text)
PY
)
if [ -z "$ATTACH" ]; then
python3 -c "$rewrite_ports" "$CONFIG" "$run/envoy.yaml" 10000="$PORT" 9901="$ADMIN_PORT" 18080="$LIVE_PORT" \
  18081="$SANDBOX_PORT" 10001="$GATEWAY_PORT" 18090="$SERVICE_PORT" 18091="$SERVICE_GATEWAY_PORT" 8082="$RATELIMIT_PORT" wasm="$WASM"

python3 envoy/echo_upstream.py "live:$LIVE_PORT" "sandbox:$SANDBOX_PORT" 2>"$run/upstreams.log" &
upstreams=$!
pids+=("$upstreams")

died() { # WHAT LOG
  echo "keygate demo: $1 exited during startup (CONFIG=$CONFIG); its last lines:" >&2
  tail -n 20 "$2" | sed "s#$run/envoy.yaml#$CONFIG#g" >&2
  exit 1
}

# The key service: a fresh SQLite database for this run, an admin token made for it. Started
# first, so that Envoy's first key fetch finds it.
if [ -n "$with_service" ]; then
  ADMIN_TOKEN=demo-admin-$(python3 -c 'import secrets; print(secrets.token_urlsafe(12))')
  # /keys and /usage answer only the sync token the configuration's key_sync carries (a demo
  # token in envoy/demo.yaml): nobody else reads the key set or sends usage.
  SYNC_TOKEN=$(sed -n 's/.*"key_sync".*"token": *"\([^"]*\)".*/\1/p; /"key_sync"/{n; s/.*"token": *"\([^"]*\)".*/\1/p}' "$run/envoy.yaml" | head -n 1)
  if [ -n "$SYNC_TOKEN" ]; then
    export KEYGATE_SYNC_TOKEN_SHA256=$("$KEYGATE" hash <<<"$SYNC_TOKEN")
  fi
  KEYGATE_ADMIN_TOKEN_SHA256=$("$KEYGATE" hash <<<"$ADMIN_TOKEN") \
    "$KEYGATE" serve --listen "127.0.0.1:$SERVICE_PORT" --gateway-listen "127.0.0.1:$SERVICE_GATEWAY_PORT" \
    --database "sqlite:$run/keys.db" --config "$run/envoy.yaml" --insecure-cookies 2>"$run/service.log" &
  service=$!
  pids+=("$service")
fi
# Envoy's own log goes to a file (shown below once Envoy is up, or its end if Envoy dies); the
# access log goes to stdout. Envoy writes its admin address to $run/admin once it has bound it.
"$ENVOY" -c "$run/envoy.yaml" --concurrency 2 --disable-hot-restart --log-level warn \
  --file-flush-interval-msec 100 --admin-address-path "$run/admin" 2>"$run/envoy.log" &
envoy=$!
pids+=("$envoy")

fi
[ -n "$ATTACH" ] && echo "127.0.0.1:$ADMIN_PORT" >"$run/admin"
ready() { [ -s "$run/admin" ] && curl -sf -o /dev/null --max-time 1 "http://$(cat "$run/admin")/ready"; }
deadline=$((SECONDS + 60))
until ready; do
  if [ -z "$ATTACH" ]; then
    kill -0 "$envoy" 2>/dev/null || died Envoy "$run/envoy.log"
    kill -0 "$upstreams" 2>/dev/null || died "the echo upstream (envoy/echo_upstream.py)" "$run/upstreams.log"
  fi
  if [ "$SECONDS" -ge "$deadline" ]; then
    tail -n 20 "$run/envoy.log" >&2
    fail "Envoy did not become ready within 60 s (its last log lines are above)"
  fi
  sleep 0.1
done
ADMIN=http://$(cat "$run/admin")
API=http://127.0.0.1:$PORT
# The key service answers once Envoy is up (if it died, Envoy's own error, above, came first).
if [ -n "$with_service" ]; then
  deadline=$((SECONDS + 30))
  until curl -sf -o /dev/null --max-time 1 "http://127.0.0.1:$SERVICE_PORT/readyz"; do
    [ -n "$ATTACH" ] || kill -0 "$service" 2>/dev/null || died "the key service (keygate serve)" "$run/service.log"
    [ "$SECONDS" -lt "$deadline" ] || fail "the key service did not answer within 30 s"
    sleep 0.1
  done
fi
# With key_sync, keys are "unavailable" (503) until the first set arrives: wait for it, seen
# from several connections (both workers), before printing anything to try.
if [ -n "$with_service" ]; then
  deadline=$((SECONDS + 30)) seen=0
  while [ "$seen" -lt 6 ]; do
    code=$(curl -s -o /dev/null -w '%{http_code}' -H 'x-keygate-demo-probe: 1' -H 'x-tenant-api-key: mlm_live_startup_probe' "$API/") || true
    if [ "$code" = 401 ]; then seen=$((seen + 1)); else seen=0; sleep 0.2; fi
    [ "$SECONDS" -lt "$deadline" ] || fail "Envoy did not receive the key set from the key service within 30 s (see $run/service.log)"
  done
fi
if [ -z "$ATTACH" ]; then
  tail -n +1 -f "$run/envoy.log" >&2 &
  pids+=($!)
fi

if [ "$CONFIG" != envoy/demo.yaml ]; then
  echo
  echo "keygate is up with $CONFIG: Envoy on $API (admin $ADMIN)."
  grep '^#' "$CONFIG"
  case $CONFIG in
    *fleet.yaml) echo "docs/fleet-limits.md (Try it) has the walkthrough: Redis, keygate ratelimit, a second Envoy. Ctrl-C stops it." ;;
    *minimal.yaml) echo "docs/getting-started.md (Loading keygate into Envoy) walks through this file. Ctrl-C stops it." ;;
    *) echo "docs/examples.md has the curl lines for this style. Ctrl-C stops it." ;;
  esac
  [ "${DEMO_SMOKE:-}" = 1 ] && exit 0 # its walk-through is tested by tests/shipped_configs.rs
  wait
  exit 0
fi

# The lines to try: each command as printed, its comment, and a pattern its output matches
# (`make demo-smoke` runs each line as printed and checks it). The sandbox key allows 5 requests
# a minute: the third line is its first, so the loop's first four answer 200 and the rest 429.
cmds=() notes=() wants=()
line() { cmds+=("$1") notes+=("$2") wants+=("$3"); }
line "curl -i $API/v1/orders" "401 Missing API key" \
  'HTTP/1.1 401 *{"error":"Missing API key","code":"UNAUTHORIZED"}'
line "curl -i -H 'x-tenant-api-key: $LIVE' $API/v1/orders" '200 from "live", see x-api-key-id' \
  'HTTP/1.1 200 *x-environment: LIVE*"upstream": "live"*"x-api-key-id": \[*"demo_live"'
line "curl -i -H 'Authorization: Bearer $SANDBOX' $API/v1/orders" '200 from "sandbox"' \
  'HTTP/1.1 200 *x-ratelimit-limit: 5*"upstream": "sandbox"'
line "curl -i -H 'x-tenant-api-key: mlm_live_wrong' $API/v1/orders" "401 Invalid, X-Environment: LIVE" \
  'HTTP/1.1 401 *x-environment: LIVE*{"error":"Invalid API key","code":"UNAUTHORIZED"}'
line "curl -i -H 'x-tenant-api-key: $LIVE' $API/v1/verify" '200 {"key":…,"organization":…}' \
  'HTTP/1.1 200 *{"key":{"id":"demo_live",*"organization":{"id":"org_demo"}}'
line "for i in 1 2 3 4 5 6; do curl -s -o /dev/null -w '%{http_code}\n' -H 'x-tenant-api-key: $SANDBOX' $API/; done" \
  "200 200 200 200 429 429: 5 a minute, and the third line used one" \
  $'200\n200\n200\n200\n429\n429'
line "sleep 1; curl -s $ADMIN/stats/prometheus | grep ^keygate" "per-key usage (flushed every 0.5 s)" \
  'keygate_allowed{key_id="demo_live"} 2*keygate_rejected{reason="rate_limited",key_id="demo_sandbox"} 2'
# The key lifecycle with the key service (SPEC §7): create, use, list, usage, revoke.
SERVICE=http://127.0.0.1:$SERVICE_PORT
line "export KEYGATE_SERVER=$SERVICE KEYGATE_ADMIN_TOKEN=$ADMIN_TOKEN" "the CLI's server and admin token" ''
line "KEY=\$($KEYGATE keys create --prefix mlm_live_ --id acme_key_1 --tenant org_acme --name 'Acme CI' --role admin); echo \$KEY" \
  "a new key, shown once (the service keeps its SHA-256)" 'shown once*mlm_live_'
line "sleep 2; curl -i -H \"x-tenant-api-key: \$KEY\" $API/v1/orders" "200: synced to Envoy within 2 s" \
  'HTTP/1.1 200 *"x-api-key-id": \[*"acme_key_1"'
line "curl -s -H \"x-tenant-api-key: \$KEY\" $API/v1/api-keys" "its tenant's keys only: an admin key manages org_acme" \
  '{"success":true,"data":\[{"id":"acme_key_1",*"tenant":"org_acme"*}\]}'
line "sleep 3; $KEYGATE keys list" "LAST USED is set (usage reports)" \
  'acme_key_1*org_acme*admin*Z  20*Z*active'
line "$KEYGATE keys usage acme_key_1" "2 requests, by hour" \
  'total: 2 requests, 2 allowed, 0 rejected'
line "$KEYGATE keys requests acme_key_1" "the request log: each call, then the addresses it came from" \
  '/v1/api-keys*200*allowed*/v1/orders*200*allowed*CLIENT IP*FIRST SEEN*LAST SEEN*REQUESTS*Z  2'
line "$KEYGATE keys revoke acme_key_1; sleep 2; curl -i -H \"x-tenant-api-key: \$KEY\" $API/v1/orders" \
  "401 revoked within 2 s" 'revoked successfully*HTTP/1.1 401 *{"error":"API key has been revoked","code":"UNAUTHORIZED"}'
line "curl -s $SERVICE/ | grep -o '<h1>Sign in</h1>'" "the dashboard answers (open it in a browser)" '<h1>Sign in</h1>'

# A customer portal link for org_acme (single use, an hour): what a provider hands a customer.
PORTAL=$(curl -s -H "Authorization: Bearer $ADMIN_TOKEN" -H 'content-type: application/json' \
  -d '{"tenant":"org_acme","ttl_seconds":3600}' "$SERVICE/v1/portal-sessions" |
  python3 -c 'import json, sys; print(json.load(sys.stdin)["data"]["url"])' 2>/dev/null) || PORTAL=""
case $PORTAL in /*) PORTAL=$SERVICE$PORTAL ;; esac

cat <<MSG

keygate demo is up: Envoy on $API (admin $ADMIN), 2 workers.
Demo keys (plaintext shown only because this is a demo; the config holds SHA-256 digests):
  LIVE     $LIVE
  SANDBOX  $SANDBOX   (5 requests/minute)
Key service (keygate serve, SQLite in $run): $SERVICE, admin token $ADMIN_TOKEN.
Envoy syncs its keys every second and reports usage to it.

Dashboard:  $SERVICE/   (sign in with the admin token above)
Portal:     ${PORTAL:-"(could not be made; see $run/service.log)"}
            (a customer's view of tenant org_acme: opens once, within the hour)

Try (in order; the last lines are one terminal session):
MSG
for i in "${!cmds[@]}"; do echo "  ${cmds[i]}   # ${notes[i]}"; done
cat <<MSG
The access log (one JSON line per request, with key_id/tenant/environment/decision) prints below.
Ctrl-C stops the demo.

MSG

if [ "${DEMO_SMOKE:-}" = 1 ]; then
  # Rate limits count in clock minutes: start the checks well inside one.
  while (($(date +%s) % 60 >= 55)); do sleep 1; done
  failed=0
  : >"$run/vars"
  for i in "${!cmds[@]}"; do
    # As typed in one terminal: what a line exports or sets ($KEY) holds for the next lines.
    out=$(bash -c ". '$run/vars'; ${cmds[i]}; export -p | grep -E ' KEYGATE_(SERVER|ADMIN_TOKEN)=' >'$run/vars'; printf 'KEY=%q\n' \"\${KEY-}\" >>'$run/vars'" 2>&1 | tr -d '\r') || true
    # shellcheck disable=SC2053 # the pattern is a glob
    if [[ $out == *${wants[i]}* ]]; then
      echo "demo smoke: ok: ${notes[i]}"
    else
      failed=1
      printf 'demo smoke: FAILED: %s\n  expected output matching: %s\n  got:\n%s\n' \
        "${cmds[i]}" "${wants[i]}" "$(sed 's/^/    /' <<<"$out")" >&2
    fi
  done
  [ "$failed" = 0 ] || fail "demo smoke failed (above: the line, what it should print, what it printed)"
  echo "demo smoke: ok (all ${#cmds[@]} lines)"
  exit 0
fi
wait
