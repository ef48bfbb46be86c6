#!/usr/bin/env bash
# `make fuzz`: coverage-guided fuzzing of keygate's pure core with libFuzzer (libfuzzer-sys) on
# stable Rust: the sanitizer-coverage flags cargo-fuzz would pass, no nightly toolchain needed.
# Every target runs FUZZ_SECONDS (default 60) from its working corpus in
# target/fuzz/corpus/<target> (outside the repository; unpacked from the minimised seeds in
# fuzz/seeds/<target>.tar.gz the first time); new inputs are merged back into it, and crashes
# are left in target/fuzz/runs/. FUZZ_SEEDS=1 also re-minimises each working corpus
# (libFuzzer's set-cover merge) and repacks its seed archive: what the repository keeps.
# Usage: fuzz/run.sh [target…]   (FUZZ_SECONDS=10 fuzz/run.sh path)
set -euo pipefail
cd "$(dirname "$0")"
SECONDS_EACH=${FUZZ_SECONDS:-60}
HOST=$(rustc -vV | sed -n 's/^host: //p')
TARGETS=("$@")
[ ${#TARGETS[@]} -gt 0 ] || TARGETS=(config key_set binary_set credentials path referer_cidr shard)
export CARGO_TARGET_DIR=../target/fuzz
# --target keeps these flags off build scripts, as cargo-fuzz does.
RUSTFLAGS="--cfg fuzzing -Cpasses=sancov-module -Cllvm-args=-sanitizer-coverage-level=4 \
-Cllvm-args=-sanitizer-coverage-inline-8bit-counters -Cllvm-args=-sanitizer-coverage-pc-table \
-Cllvm-args=-sanitizer-coverage-trace-compares -Cdebug-assertions -Coverflow-checks" \
  cargo build --release --target "$HOST" --quiet
BIN=../target/fuzz/$HOST/release
OUT=../target/fuzz/runs
mkdir -p "$OUT"
status=0
printf '| target | seconds | executions | exec/s | corpus | result |\n|---|---:|---:|---:|---:|---|\n'
CORPORA=../target/fuzz/corpus
for t in "${TARGETS[@]}"; do
  corpus="$CORPORA/$t"
  if [ ! -d "$corpus" ]; then
    mkdir -p "$corpus"
    [ -f "seeds/$t.tar.gz" ] && tar -xzf "seeds/$t.tar.gz" -C "$corpus"
  fi
  mkdir -p "$OUT/$t"
  log="$OUT/$t.log"
  if "$BIN/$t" -max_total_time="$SECONDS_EACH" -print_final_stats=1 \
       -artifact_prefix="$OUT/$t-" "$OUT/$t" "$corpus" >"$log" 2>&1; then
    result=ok
  else
    result="CRASH: see $log and $OUT/$t-crash-*"
    status=1
  fi
  # Only inputs that add coverage join the working corpus.
  "$BIN/$t" -merge=1 "$corpus" "$OUT/$t" >/dev/null 2>&1 || true
  rm -rf "$OUT/$t"
  if [ "${FUZZ_SEEDS:-0}" = 1 ]; then
    # The fewest inputs that keep the corpus's coverage, packed reproducibly.
    seeds="$OUT/$t-seeds"
    rm -rf "$seeds" && mkdir -p "$seeds"
    "$BIN/$t" -set_cover_merge=1 "$seeds" "$corpus" >/dev/null 2>&1
    tar -C "$seeds" -czf "seeds/$t.tar.gz" --sort=name --mtime='2026-01-01 00:00Z' \
      --owner=0 --group=0 --numeric-owner .
    rm -rf "$seeds"
  fi
  runs=$(sed -n 's/^stat::number_of_executed_units: *//p' "$log" | tail -1)
  secs=$(sed -n 's/^Done [0-9]* runs in \([0-9]*\) second.*/\1/p' "$log" | tail -1)
  per=$(( ${runs:-0} / (${secs:-$SECONDS_EACH} > 0 ? ${secs:-$SECONDS_EACH} : 1) ))
  printf '| %s | %s | %s | %s | %s | %s |\n' "$t" "${secs:-?}" "${runs:-?}" "$per" \
    "$(ls "$corpus" | wc -l)" "$result"
done
exit $status
