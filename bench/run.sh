#!/usr/bin/env bash
# `make bench`: Envoy CPU per request with and without keygate (and Envoy's native api_key_auth),
# key-set parsing throughput, then key_sync at 1,000,000 keys. A full run (no arguments) also
# writes bench/RESULTS.md; `bench/run.sh cost|parse|sync` runs one section.
set -euo pipefail
cd "$(dirname "$0")/.."
# Its own target dir: the bench profile would otherwise collide with release artefacts.
export CARGO_TARGET_DIR=target/bench-build
if [ $# -eq 0 ]; then
  cargo bench --bench envoy | tee bench/RESULTS.md
else
  cargo bench --bench envoy -- "$@"
fi
