#!/usr/bin/env bash
# tools/test.sh - set up (tools/setup.sh) and run every test: the C unit tests (meson test), the
# Python suite (pytest), and the sanitizer tiers: ASan + UBSan (tools/sanitize.sh --python),
# ThreadSanitizer (tools/tsan.sh) and valgrind memcheck (tools/valgrind.sh). docs/testing.md says
# what each covers. Exits non-zero if anything fails.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
bash tools/setup.sh
# shellcheck disable=SC1091
. .venv/bin/activate

echo "== C unit tests"
FIX="$ROOT/build/fixtures"
rm -rf "$FIX"; mkdir -p "$FIX"
python tests/c/make_zarr_fixtures.py "$FIX/zarr" >/dev/null
python tests/c/make_h5_fixtures.py "$FIX/h5" >/dev/null
python tests/c/make_loader_fixtures.py "$FIX/loader" >/dev/null
export ANS_ZARR_FIXTURES="$FIX/zarr" ANS_H5_FIXTURES="$FIX/h5" ANS_LOADER_FIXTURES="$FIX/loader"
# -Dfuzz=true adds one replay test per fuzz target over fuzz/corpus and fuzz/regressions.
if [ ! -f build/c/build.ninja ]; then
  meson setup build/c -Dpython=false -Dfuzz=true --buildtype=debugoptimized >/dev/null
else
  meson configure build/c -Dfuzz=true >/dev/null
fi
meson test -C build/c --print-errorlogs

echo "== annbatch (Python 3.12 venv) for the test that annbatch's loader reads our collections"
bash tools/setup_annbatch.sh >/dev/null ||
  echo "annbatch venv unavailable: test_annbatch_loader_reads_output will skip"

echo "== Python tests"
python -m pytest -q tests/python

echo "== Sanitizer tier (ASan + UBSan: C tests, fuzz replay, Python suite)"
bash tools/sanitize.sh --python

echo "== ThreadSanitizer tier (C tests, Python loader and concurrency tests)"
bash tools/tsan.sh

echo "== valgrind memcheck tier (C read and loader tests, a Python read and loader epoch)"
bash tools/valgrind.sh
