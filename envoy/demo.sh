#!/usr/bin/env bash
# `make run`: the demo. Starts two echo upstreams and Envoy with keygate, prints curl lines to try,
# and stops everything on Ctrl-C. CONFIG=envoy/examples/<style>.yaml runs a provider example
# instead. With DEMO_SMOKE=1 it runs the demo's curl lines itself and exits.
set -euo pipefail
cd "$(dirname "$0")/.."
ENVOY=.venv/bin/envoy
CONFIG=${CONFIG:-envoy/demo.yaml}
LIVE=mlm_live_demo_4cTq9ZrW2yXb7Ke1
SANDBOX=mlm_sandbox_demo_8Hn3Lp5Vx0Qa6Ms2

pids=()
cleanup() { for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done; wait 2>/dev/null || true; }
trap cleanup EXIT INT TERM

python3 envoy/echo_upstream.py live:18080 sandbox:18081 & pids+=($!)
"$ENVOY" -c "$CONFIG" --concurrency 2 --disable-hot-restart --log-level warn \
  --file-flush-interval-msec 100 & pids+=($!)

ready() { python3 -c 'import urllib.request as u; u.urlopen("http://127.0.0.1:9901/ready", timeout=1)' 2>/dev/null; }
for _ in $(seq 1 200); do
  ready && break
  sleep 0.1
done
ready || { echo "Envoy did not become ready"; exit 1; }

if [ "$CONFIG" != envoy/demo.yaml ]; then
  echo
  echo "keygate is up with $CONFIG: Envoy on http://127.0.0.1:10000 (admin http://127.0.0.1:9901)."
  grep '^#' "$CONFIG"
  echo "The README's walk-through for this style has the curl lines. Ctrl-C stops it."
  wait
  exit 0
fi

cat <<MSG

keygate demo is up: Envoy on http://127.0.0.1:10000 (admin http://127.0.0.1:9901), 2 workers.
Demo keys (plaintext shown only because this is a demo; the config holds SHA-256 digests):
  LIVE     $LIVE
  SANDBOX  $SANDBOX   (5 requests/minute)

Try:
  curl -i http://127.0.0.1:10000/v1/orders                                        # 401 Missing API key
  curl -i -H 'x-tenant-api-key: $LIVE' http://127.0.0.1:10000/v1/orders   # 200 from "live", see x-api-key-id
  curl -i -H 'Authorization: Bearer $SANDBOX' http://127.0.0.1:10000/v1/orders   # 200 from "sandbox"
  curl -i -H 'x-tenant-api-key: mlm_live_wrong' http://127.0.0.1:10000/v1/orders  # 401 Invalid, X-Environment: LIVE
  curl -i -H 'x-tenant-api-key: $LIVE' http://127.0.0.1:10000/v1/verify   # 200 {"key":…,"organization":…}
  for i in 1 2 3 4 5 6; do curl -s -o /dev/null -w '%{http_code}\\n' -H 'x-tenant-api-key: $SANDBOX' http://127.0.0.1:10000/; done  # …429
  curl -s http://127.0.0.1:9901/stats/prometheus | grep ^keygate                     # per-key usage
The access log (one JSON line per request, with key_id/tenant/environment/decision) prints below.
Ctrl-C stops the demo.

MSG

if [ "${DEMO_SMOKE:-}" = 1 ]; then
  set -x
  curl -s -o /dev/null -w '%{http_code}\n' http://127.0.0.1:10000/v1/orders | grep -qx 401
  curl -s -H "x-tenant-api-key: $LIVE" http://127.0.0.1:10000/v1/orders | grep -q '"upstream": "live"'
  curl -s -H "Authorization: Bearer $SANDBOX" http://127.0.0.1:10000/v1/orders | grep -q '"upstream": "sandbox"'
  curl -s -H "x-tenant-api-key: $LIVE" http://127.0.0.1:10000/v1/verify | grep -q '"id":"org_demo"'
  echo "demo smoke: ok"
  exit 0
fi
wait
