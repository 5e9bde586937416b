#!/usr/bin/env bash
# tools/sanitize.sh - the sanitizer tier (docs/testing.md).
#
#   tools/sanitize.sh            C unit tests + fuzz corpus replay under ASan + UBSan
#   tools/sanitize.sh --python   also the Python suite against an ASan build of the extension
#
# 1. Builds build/asan (meson, the default C compiler, -Db_sanitize=address,undefined,
#    -fno-sanitize-recover=all, -Dfuzz=true: the replay drivers too).
# 2. meson test: every C unit test (fixtures regenerated under build/asan/fixtures) and the fuzz
#    suite, which replays fuzz/corpus/<target> and fuzz/regressions/<target> through each target.
#    LeakSanitizer is on for the C tests.
# 3. --python: builds the extension with the same sanitizers in build/asan-py, puts it on
#    PYTHONPATH ahead of the .venv install and runs pytest with libasan preloaded
#    (detect_leaks=0: CPython itself does not free everything at exit).
# Needs what tools/setup.sh installs (run it first on a fresh machine). Exits non-zero on failure.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
PYTHON_TOO=0
for a in "$@"; do
  case $a in
    --python) PYTHON_TOO=1 ;;
    *) echo "usage: tools/sanitize.sh [--python]" >&2; exit 2 ;;
  esac
done
[ -x .venv/bin/python ] || bash tools/setup.sh
# shellcheck disable=SC1091
. .venv/bin/activate
start=$(date +%s)

SAN_ARGS=(-Db_sanitize=address,undefined -Db_lundef=false --buildtype=debugoptimized
          "-Dc_args=['-fno-sanitize-recover=all','-fno-omit-frame-pointer']")
# allocator_may_return_null=1: an allocation too large for the machine returns NULL, as malloc does
# without ASan, so annstream's ENOMEM paths (hostile sizes in tests/python/test_hostile.py) are
# tested instead of ASan aborting the process.
export ASAN_OPTIONS="${ASAN_OPTIONS:-detect_leaks=1:detect_stack_use_after_return=1:strict_string_checks=1:allocator_may_return_null=1}"
export UBSAN_OPTIONS="${UBSAN_OPTIONS:-halt_on_error=1:print_stacktrace=1}"

echo "== sanitizer build (build/asan)"
if [ ! -f build/asan/build.ninja ]; then
  meson setup build/asan -Dpython=false -Dtests=true -Dfuzz=true "${SAN_ARGS[@]}" >/dev/null
fi
ninja -C build/asan >/dev/null

echo "== fixtures"
FIX="$ROOT/build/asan/fixtures"
rm -rf "$FIX"; mkdir -p "$FIX"
python tests/c/make_zarr_fixtures.py "$FIX/zarr" >/dev/null
python tests/c/make_h5_fixtures.py "$FIX/h5" >/dev/null
export ANS_ZARR_FIXTURES="$FIX/zarr" ANS_H5_FIXTURES="$FIX/h5"
if [ -f tests/c/make_loader_fixtures.py ]; then
  python tests/c/make_loader_fixtures.py "$FIX/loader" >/dev/null
  export ANS_LOADER_FIXTURES="$FIX/loader"
fi

echo "== C unit tests + fuzz corpus replay under ASan + UBSan"
meson test -C build/asan --print-errorlogs

if [ "$PYTHON_TOO" = 1 ]; then
  echo "== Python suite against an ASan build of the extension (build/asan-py)"
  if [ ! -f build/asan-py/build.ninja ]; then
    meson setup build/asan-py -Dpython=true -Dtests=false -Dfuzz=false "${SAN_ARGS[@]}" \
      -Dpython.install_env=auto >/dev/null
  fi
  ninja -C build/asan-py >/dev/null
  PKG="$ROOT/build/asan-py/pkg/annstream"
  rm -rf "$ROOT/build/asan-py/pkg"; mkdir -p "$PKG"
  cp python/annstream/*.py "$PKG/"
  cp build/asan-py/*.so "$PKG/"
  CC_NAME=$(meson introspect build/asan-py --compilers 2>/dev/null | python -c 'import json,sys; print(json.load(sys.stdin)["host"]["c"]["exelist"][0])' 2>/dev/null || echo cc)
  if "$CC_NAME" --version 2>/dev/null | grep -c clang >/dev/null; then
    LIBASAN=$("$CC_NAME" -print-file-name=libclang_rt.asan-x86_64.so)
  else
    LIBASAN=$("$CC_NAME" -print-file-name=libasan.so)
  fi
  # The extension's UBSan runtime comes with libasan for gcc; clang links it statically.
  # libstdc++ is preloaded too: python itself does not link it, and without it ASan's __cxa_throw
  # interceptor finds no real __cxa_throw and aborts the first time torch throws a C++ exception
  # (e.g. torch.device("banana") in test_cuda.py).
  LIBSTDCXX=$("$CC_NAME" -print-file-name=libstdc++.so.6)
  [ -f "$LIBSTDCXX" ] && LIBASAN="$LIBASAN $LIBSTDCXX"
  PYTHONPATH="$ROOT/build/asan-py/pkg" LD_PRELOAD="$LIBASAN" \
  ASAN_OPTIONS="detect_leaks=0:detect_stack_use_after_return=0:allocator_may_return_null=1" \
    python -c 'import annstream, sys; assert annstream.__file__.startswith(sys.argv[1]), annstream.__file__' "$ROOT/build/asan-py/pkg"
  PYTHONPATH="$ROOT/build/asan-py/pkg" LD_PRELOAD="$LIBASAN" \
  ASAN_OPTIONS="detect_leaks=0:detect_stack_use_after_return=0:allocator_may_return_null=1" \
    python -m pytest -q -p no:cacheprovider tests/python
fi
echo "== sanitize.sh: all passed in $(( $(date +%s) - start ))s"
