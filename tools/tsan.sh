#!/usr/bin/env bash
# tools/tsan.sh - the ThreadSanitizer tier (docs/testing.md).
#
#   tools/tsan.sh                every C unit test + the Python loader and concurrency tests
#                                (test_loader.py, test_concurrency.py, test_cuda.py) against a
#                                TSan extension
#   tools/tsan.sh --c-only       only the C unit tests
#   tools/tsan.sh --all-python   the C unit tests + the whole Python suite (slow: several minutes,
#                                and the memory-budget tests of test_hostile.py cannot pass under
#                                TSan's shadow memory)
#
# 1. Builds build/tsan (meson, clang-19, -Db_sanitize=thread) and runs every C unit test (the loader,
#    the thread pool, the parallel chunk decoding, the writer) with fixtures regenerated under
#    build/tsan/fixtures.
# 2. A canary: a deliberately racy shared library, loaded into python the way the extension is,
#    must make TSan report and exit with TSan's exit code. This proves the runtime is active and
#    that a report fails the tier before anything is declared clean.
# 3. Builds the extension with the same compiler and flags in build/tsan-py, puts it on PYTHONPATH
#    ahead of the .venv install (build/tsan-py/pkg/annstream) and runs pytest with the compiler's
#    TSan runtime preloaded into the (uninstrumented) python.
#
# Why clang-19 and not the default gcc 12 or clang 14 (Debian bookworm):
#  - clang 14's shared TSan runtime crashes at start-up when preloaded (even into /bin/true);
#  - gcc 12's libtsan works for the C tests and in python, but after fork() it keeps the parent's
#    threads as live, so a DataLoader worker that starts a thread dies with "ThreadSanitizer: dup
#    thread with used id"; the LLVM 19 runtime resets its thread registry in the child.
#  ANS_TSAN_CC=gcc tools/tsan.sh --c-only runs the C part with gcc's runtime instead.
#
# Any report fails the tier: halt_on_error=1 and exitcode=66 (a worker process that reports exits 66,
# which fails the test that started it). tools/tsan.supp may only hold suppressions for reports that
# lie entirely in third-party code. Python runs with report_thread_leaks=0: CPython does not free the
# objects still alive at exit, so a loader still referenced then (a daemon thread's, a module-level
# one) never joins its finished producer thread; the C tests keep thread-leak reports on.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
MODE=loader
for a in "$@"; do
  case $a in
    --c-only) MODE=c ;;
    --all-python) MODE=all ;;
    *) echo "usage: tools/tsan.sh [--c-only | --all-python]" >&2; exit 2 ;;
  esac
done
[ -x .venv/bin/python ] || bash tools/setup.sh
# shellcheck disable=SC1091
. .venv/bin/activate
start=$(date +%s)

TSAN_CC="${ANS_TSAN_CC:-clang-19}"
if ! command -v "$TSAN_CC" >/dev/null; then
  if [ "$TSAN_CC" = clang-19 ]; then
    echo "tsan: installing clang-19 and its sanitizer runtimes (Debian)"
    SUDO=""; [ "$(id -u)" = 0 ] || SUDO="sudo"
    $SUDO apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends \
      clang-19 libclang-rt-19-dev >/dev/null
  else
    echo "tsan: compiler $TSAN_CC not found" >&2; exit 1
  fi
fi
if "$TSAN_CC" --version | grep -c clang >/dev/null; then
  RUNTIME=$("$TSAN_CC" -print-file-name=libclang_rt.tsan-x86_64.so)
else
  RUNTIME=$("$TSAN_CC" -print-file-name=libtsan.so)
fi
if [ ! -f "$RUNTIME" ]; then
  echo "tsan: no TSan runtime for $TSAN_CC ($RUNTIME); Debian: apt-get install libclang-rt-19-dev" >&2
  exit 1
fi

# TSan maps its shadow memory at fixed addresses; with a high-entropy ASLR (vm.mmap_rnd_bits > 28)
# older runtimes stop with "FATAL: ThreadSanitizer: unexpected memory mapping". Running without
# address randomisation avoids that and changes nothing else; setarch's personality is inherited by
# the subprocesses and DataLoader workers.
RUN=()
if setarch "$(uname -m)" -R true 2>/dev/null; then RUN=(setarch "$(uname -m)" -R); fi

SUPP="$ROOT/tools/tsan.supp"
# allocator_may_return_null: a failed huge allocation returns NULL (annstream reports ENOMEM) as it
# does without TSan, instead of TSan aborting the process.
TSAN_BASE="halt_on_error=1:exitcode=66:second_deadlock_stack=1:die_after_fork=0"
TSAN_BASE="$TSAN_BASE:allocator_may_return_null=1:suppressions=$SUPP"
if command -v llvm-symbolizer >/dev/null; then
  TSAN_BASE="$TSAN_BASE:external_symbolizer_path=$(command -v llvm-symbolizer)"
fi
SAN_ARGS=(-Db_sanitize=thread -Db_lundef=false --buildtype=debugoptimized
          "-Dc_args=['-fno-omit-frame-pointer']")

# (Re)configure a build directory for $TSAN_CC; a directory set up with another compiler is redone.
setup_dir() {
  local dir=$1; shift
  if [ -f "$dir/build.ninja" ]; then
    local have
    have=$(meson introspect "$dir" --compilers 2>/dev/null |
           python -c 'import json,sys; print(json.load(sys.stdin)["host"]["c"]["exelist"][0])' \
           2>/dev/null || echo "?")
    if [ "$(basename "$have")" != "$(basename "$TSAN_CC")" ]; then rm -rf "$dir"; fi
  fi
  if [ ! -f "$dir/build.ninja" ]; then
    CC="$TSAN_CC" meson setup "$dir" "$@" "${SAN_ARGS[@]}" >/dev/null
  fi
  ninja -C "$dir" >/dev/null
}

echo "== TSan build (build/tsan, $TSAN_CC)"
setup_dir build/tsan -Dpython=false -Dtests=true -Dfuzz=false

echo "== fixtures"
FIX="$ROOT/build/tsan/fixtures"
rm -rf "$FIX"; mkdir -p "$FIX"
python tests/c/make_zarr_fixtures.py "$FIX/zarr" >/dev/null
python tests/c/make_h5_fixtures.py "$FIX/h5" >/dev/null
python tests/c/make_loader_fixtures.py "$FIX/loader" >/dev/null
export ANS_ZARR_FIXTURES="$FIX/zarr" ANS_H5_FIXTURES="$FIX/h5" ANS_LOADER_FIXTURES="$FIX/loader"

echo "== C unit tests under TSan"
TSAN_OPTIONS="$TSAN_BASE" "${RUN[@]}" meson test -C build/tsan --print-errorlogs

if [ "$MODE" = c ]; then
  echo "== tsan.sh: C tests passed in $(( $(date +%s) - start ))s"
  exit 0
fi

PY_OPTS="$TSAN_BASE:report_thread_leaks=0"

echo "== canary: a racy library loaded into python must fail with a TSan report"
CANARY=build/tsan/canary
mkdir -p "$CANARY"
cat > "$CANARY/canary.c" <<'EOF'
#include <pthread.h>
static long counter; /* written by two threads without synchronisation: a data race */
static void *bump(void *arg)
{
    for (int i = 0; i < 1000; i++) counter++;
    return arg;
}
__attribute__((visibility("default"))) long ans_tsan_canary(void)
{
    pthread_t t;
    if (pthread_create(&t, NULL, bump, NULL) != 0) return -1;
    bump(NULL);
    pthread_join(t, NULL);
    return counter;
}
EOF
"$TSAN_CC" -fsanitize=thread -fPIC -shared -g -O1 -o "$CANARY/canary.so" "$CANARY/canary.c"
set +e
LD_PRELOAD="$RUNTIME" TSAN_OPTIONS="$PY_OPTS" "${RUN[@]}" \
  python -c 'import ctypes, sys; ctypes.CDLL(sys.argv[1]).ans_tsan_canary()' "$CANARY/canary.so" \
  > "$CANARY/out.txt" 2>&1
rc=$?
set -e
if [ "$rc" != 66 ] || ! grep -q "WARNING: ThreadSanitizer: data race" "$CANARY/out.txt"; then
  echo "tsan: the canary race was not reported (exit $rc, expected 66):" >&2
  cat "$CANARY/out.txt" >&2
  exit 1
fi

echo "== Python tests against a TSan build of the extension (build/tsan-py)"
setup_dir build/tsan-py -Dpython=true -Dtests=false -Dfuzz=false -Dpython.install_env=auto
PKG="$ROOT/build/tsan-py/pkg/annstream"
rm -rf "$ROOT/build/tsan-py/pkg"; mkdir -p "$PKG"
cp python/annstream/*.py "$PKG/"
cp build/tsan-py/*.so "$PKG/"
nm -D "$PKG"/_core*.so | grep -c "__tsan_func_entry" >/dev/null ||
  { echo "tsan: $PKG/_core*.so is not instrumented" >&2; exit 1; }
export PYTHONPATH="$ROOT/build/tsan-py/pkg"
LD_PRELOAD="$RUNTIME" TSAN_OPTIONS="$PY_OPTS" "${RUN[@]}" \
  python -c 'import annstream, sys; assert annstream.__file__.startswith(sys.argv[1]), annstream.__file__' \
  "$ROOT/build/tsan-py/pkg"
if [ "$MODE" = loader ]; then
  TESTS=(tests/python/test_loader.py)
  [ -f tests/python/test_concurrency.py ] && TESTS+=(tests/python/test_concurrency.py)
  TESTS+=(tests/python/test_cuda.py) # pin / unpin called from the loader's threads
else
  TESTS=(tests/python)
fi
LD_PRELOAD="$RUNTIME" TSAN_OPTIONS="$PY_OPTS" "${RUN[@]}" \
  python -m pytest -q -p no:cacheprovider "${TESTS[@]}"
echo "== tsan.sh: all passed in $(( $(date +%s) - start ))s"
