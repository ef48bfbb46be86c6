#!/usr/bin/env bash
# `make bench`: Envoy CPU per request with keygate, a minimal Wasm filter (the floor) and Envoy's
# native filters, host calls per request, key-set parsing throughput, key_sync at 1,000,000
# keys, then fleet-wide limits (benches/fleet.rs: Redis and `keygate ratelimit`) and the request
# log (benches/request_log.rs: ingest rates, bytes per record, a key's last day at 10 million
# records), then `keygate scan` (benches/scan.rs: files/s over a 100,000-file tree, blobs/s over
# this repository's history). A full run (no arguments) also writes bench/RESULTS.md;
# `bench/run.sh cost|parse|sync|fleet|request_log|scan` runs one section.
set -euo pipefail
cd "$(dirname "$0")/.."
# The floor (a minimal filter, same SDK) and the host-call-counting keygate, each in its own
# target dir; the bench profile would otherwise collide with release artefacts too.
CARGO_TARGET_DIR=target/minimal-filter cargo build --quiet --release --target wasm32-wasip1 \
  --manifest-path bench/minimal-filter/Cargo.toml
CARGO_TARGET_DIR=target/hostcalls cargo rustc -p keygate --quiet --release --target wasm32-wasip1 --lib \
  --crate-type cdylib --features hostcall-count
# rustc's own output, before `make wasm`'s wasm-opt pass: the cost section runs both.
CARGO_TARGET_DIR=target/noopt cargo rustc -p keygate --quiet --release --target wasm32-wasip1 --lib \
  --crate-type cdylib
export CARGO_TARGET_DIR=target/bench-build
cargo bench -p keygate-tests --no-run --bench envoy --bench fleet --bench request_log --bench scan --quiet
# Envoy on CPU 0, the load generator on the others, where the machine has more than one.
pin=()
if [ "$(nproc)" -gt 1 ] && command -v taskset >/dev/null; then
  export KEYGATE_ENVOY_CPUS=0
  pin=(taskset -c "1-$(( $(nproc) - 1 ))")
fi
if [ $# -eq 0 ]; then
  "${pin[@]}" cargo bench -p keygate-tests --bench envoy | tee bench/RESULTS.md
  "${pin[@]}" cargo bench -p keygate-tests --bench fleet | tee -a bench/RESULTS.md
  cargo bench -p keygate-tests --bench request_log | tee -a bench/RESULTS.md
  cargo bench -p keygate-tests --bench scan | tee -a bench/RESULTS.md
elif [ "$*" = request_log ]; then
  cargo bench -p keygate-tests --bench request_log
elif [ "$*" = scan ]; then
  cargo bench -p keygate-tests --bench scan
elif [ "$*" = fleet ]; then
  "${pin[@]}" cargo bench -p keygate-tests --bench fleet
else
  "${pin[@]}" cargo bench -p keygate-tests --bench envoy -- "$@"
fi
