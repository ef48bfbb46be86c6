#!/usr/bin/env bash
# `make bench`: Envoy CPU per request with and without keygate (and Envoy's native api_key_auth),
# then key_sync at 1,000,000 keys. Results go to stdout and bench/RESULTS.md.
set -euo pipefail
cd "$(dirname "$0")/.."
# Its own target dir: the bench profile would otherwise collide with release artefacts.
CARGO_TARGET_DIR=target/bench-build cargo bench --bench envoy -- "$@" | tee bench/RESULTS.md
