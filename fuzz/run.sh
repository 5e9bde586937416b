#!/usr/bin/env bash
# fuzz/run.sh - run a fuzz target with libFuzzer (docs/testing.md).
#
#   fuzz/run.sh TARGET SECONDS [LIBFUZZER_ARGS...]   fuzz one target (fuzz/meson.build lists them)
#   fuzz/run.sh all SECONDS [LIBFUZZER_ARGS...]      each target in turn, SECONDS each
#
# Builds build/fuzz-libfuzzer (clang, -fsanitize=fuzzer,address,undefined; reconfigured only when
# missing) and runs fuzz_TARGET on fuzz/corpus/TARGET (seeds). New interesting
# inputs go to build/fuzz-libfuzzer/corpus/TARGET (not committed: copy the ones worth keeping into
# fuzz/corpus/TARGET, or rebuild seeds with fuzz/make_corpus.py); crashes, timeouts and OOMs are
# written to build/fuzz-libfuzzer/artifacts/TARGET/. A crash input belongs in
# fuzz/regressions/TARGET/ once it is understood; the replay tests then run it forever after.
# Reproduce a crash: build/fuzz-libfuzzer/fuzz/fuzz_TARGET FILE (or the replay driver, see
# docs/testing.md). Environment: ANS_FUZZ_BUILD (build dir), ANS_FUZZ_JOBS (parallel targets for
# `all`, default 1). Exit status: non-zero if any target found a crash.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
if [ $# -lt 2 ]; then
  sed -n '2,16p' "$0" | sed 's/^# \{0,1\}//'
  exit 2
fi
TARGET=$1 SECONDS_EACH=$2
shift 2
BUILD="${ANS_FUZZ_BUILD:-$ROOT/build/fuzz-libfuzzer}"
ALL=(json zarr_meta_v2 zarr_meta_v3 shard_index codec_blosc codec_zstd codec_zlib codec_lz4
     codec_vlen sparse store_zarr h5)

if [ -x .venv/bin/meson ]; then PATH="$ROOT/.venv/bin:$PATH"; fi
if [ ! -f "$BUILD/build.ninja" ]; then
  CC=clang meson setup "$BUILD" -Dpython=false -Dtests=false -Dfuzz=true \
    --buildtype=debugoptimized -Db_sanitize=address,undefined -Db_lundef=false \
    "-Dc_args=['-fsanitize=fuzzer-no-link','-fno-sanitize-recover=all','-fno-omit-frame-pointer']" \
    >/dev/null
fi
ninja -C "$BUILD" >/dev/null

run_one() {
  local t=$1
  shift
  local exe="$BUILD/fuzz/fuzz_$t"
  [ -x "$exe" ] || { echo "run.sh: no target '$t' (have: ${ALL[*]})" >&2; return 2; }
  local work="$BUILD/corpus/$t" art="$BUILD/artifacts/$t"
  mkdir -p "$work" "$art" "fuzz/corpus/$t"
  # fuzz/regressions is left out: an open regression would stop libFuzzer at startup (the replay
  # tests run those); add it by hand to check a fix: fuzz/run.sh T 60 fuzz/regressions/T
  local dirs=("$work" "fuzz/corpus/$t")
  local dict=()
  case $t in json|zarr_meta_v2|zarr_meta_v3|store_zarr|sparse) dict=(-dict=fuzz/dict/zarr.dict) ;; esac
  local extra=()
  # h5: libhdf5 keeps free lists and global caches that LeakSanitizer would report as leaks, and
  # crashes inside libhdf5 itself on many corrupt files (not annstream's to fix): keep fuzzing
  # after a crash (-fork) and triage the artifacts afterwards (docs/testing.md).
  [ "$t" = h5 ] && extra=(-detect_leaks=0 -fork=1 -ignore_crashes=1 -ignore_timeouts=1 -ignore_ooms=1)
  echo "== fuzz $t for ${SECONDS_EACH}s (log: $BUILD/$t.log)"
  local rc=0
  ASAN_OPTIONS="${ASAN_OPTIONS:-abort_on_error=0:detect_stack_use_after_return=1}" \
  UBSAN_OPTIONS="${UBSAN_OPTIONS:-halt_on_error=1:print_stacktrace=1}" \
    "$exe" -max_total_time="$SECONDS_EACH" -timeout=30 -rss_limit_mb=4096 \
      -artifact_prefix="$art/" -print_final_stats=1 "${dict[@]}" "${extra[@]}" "${dirs[@]}" "$@" \
      >"$BUILD/$t.log" 2>&1 || rc=$?
  grep -E "^(stat::number_of_executed_units|stat::average_exec_per_sec|stat::peak_rss_mb)|^#[0-9]+: cov: .* exec/s|^INFO: fuzzed for" "$BUILD/$t.log" | tail -4 | sed "s/^/   $t: /" || true
  if [ $rc -ne 0 ]; then
    echo "   $t: FAILED (exit $rc); artifacts in $art:" >&2
    ls "$art" >&2 || true
    grep -m1 -E "ERROR: (AddressSanitizer|libFuzzer|LeakSanitizer)|runtime error|fuzz invariant" "$BUILD/$t.log" >&2 || true
  fi
  return $rc
}

if [ "$TARGET" = all ]; then
  status=0
  jobs=${ANS_FUZZ_JOBS:-1}
  if [ "$jobs" -le 1 ]; then
    for t in "${ALL[@]}"; do run_one "$t" "$@" || status=1; done
  else
    pids=()
    for t in "${ALL[@]}"; do
      while [ "$(jobs -rp | wc -l)" -ge "$jobs" ]; do sleep 1; done
      run_one "$t" "$@" & pids+=($!)
    done
    for p in "${pids[@]}"; do wait "$p" || status=1; done
  fi
  exit $status
fi
run_one "$TARGET" "$@"
