#!/usr/bin/env bash
# tools/valgrind.sh - the valgrind memcheck tier (docs/testing.md).
#
#   tools/valgrind.sh           C read tests + the C loader test + a Python read and loader epoch
#   tools/valgrind.sh --all-c   every C unit test instead of the read and loader tests only
#   tools/valgrind.sh --c-only  the C part only
#
# 1. Builds build/valgrind without sanitizers (meson, the default C compiler, debugoptimized: -O2 -g;
#    the C tests and the Python extension from the same sources).
# 2. C: runs test_zarr and test_h5 (the read paths: zarr v2/v3, sharding, codecs, HDF5) and
#    test_loader under memcheck with --leak-check=full; any error, and any definite, indirect or
#    possible leak, fails (--error-exitcode=1).
# 3. Python: writes stores with the real anndata (tests/python/stores.py, spec "main": zarr v2,
#    zarr v3 sharded, h5ad with gzip; every element kind), then runs python under memcheck with
#    PYTHONMALLOC=malloc (so every Python object is a malloc block valgrind can see) and the
#    extension from build/valgrind: every element of every store read at shuffled rows and compared
#    with what anndata read, obs / var read, and one shuffled loader epoch over the three stores
#    (each row exactly once, contents compared). Memory errors anywhere and definite leaks fail;
#    tools/valgrind.supp silences only reports that lie entirely in CPython or numpy.
# Needs valgrind (Debian: apt-get install valgrind; installed here if missing).
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
C_TESTS=(zarr h5 loader)
PYTHON_TOO=1
for a in "$@"; do
  case $a in
    --all-c) C_TESTS=(common codec zarr h5 sampler loader writer convert) ;;
    --c-only) PYTHON_TOO=0 ;;
    *) echo "usage: tools/valgrind.sh [--all-c] [--c-only]" >&2; exit 2 ;;
  esac
done
[ -x .venv/bin/python ] || bash tools/setup.sh
# shellcheck disable=SC1091
. .venv/bin/activate
start=$(date +%s)
if ! command -v valgrind >/dev/null; then
  echo "valgrind: installing valgrind (Debian)"
  SUDO=""; [ "$(id -u)" = 0 ] || SUDO="sudo"
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends valgrind >/dev/null
fi

OUT="$ROOT/build/valgrind"
echo "== build (build/valgrind, no sanitizers)"
if [ ! -f "$OUT/build.ninja" ]; then
  meson setup "$OUT" -Dpython=true -Dtests=true -Dfuzz=false --buildtype=debugoptimized \
    -Dpython.install_env=auto >/dev/null
fi
ninja -C "$OUT" >/dev/null

# --child-silent-after-fork: test_loader forks while its producer thread is mid-read; in the child
# that thread does not exist, so the blocks only its stack pointed to are "definitely lost" there
# (and the child _exits without freeing the parent's objects). Only the parent is checked.
VG=(valgrind -q --tool=memcheck --error-exitcode=1 --leak-check=full
    --show-leak-kinds=definite,indirect,possible --num-callers=30 --child-silent-after-fork=yes)

echo "== fixtures"
FIX="$OUT/fixtures"
rm -rf "$FIX"; mkdir -p "$FIX"
python tests/c/make_zarr_fixtures.py "$FIX/zarr" >/dev/null
python tests/c/make_h5_fixtures.py "$FIX/h5" >/dev/null
python tests/c/make_loader_fixtures.py "$FIX/loader" >/dev/null
export ANS_ZARR_FIXTURES="$FIX/zarr" ANS_H5_FIXTURES="$FIX/h5" ANS_LOADER_FIXTURES="$FIX/loader"

fail=0
for t in "${C_TESTS[@]}"; do
  t0=$(date +%s)
  log="$OUT/memcheck-test_$t.log"
  # A C test frees everything it allocates: every leak kind counts.
  if "${VG[@]}" --errors-for-leak-kinds=definite,indirect,possible --log-file="$log" \
       "$OUT/tests/c/test_$t" > "$OUT/test_$t.out" 2>&1 && [ ! -s "$log" ]; then
    echo "ok   memcheck test_$t ($(tail -n1 "$OUT/test_$t.out"), $(( $(date +%s) - t0 ))s)"
  else
    echo "FAIL memcheck test_$t: $log"; cat "$OUT/test_$t.out" "$log"; fail=1
  fi
done

if [ "$PYTHON_TOO" = 1 ]; then
  echo "== stores for the Python run (anndata)"
  STORES="$OUT/stores"
  rm -rf "$STORES"; mkdir -p "$STORES"
  python - "$STORES" <<'EOF'
import pickle, sys
from pathlib import Path
sys.path.insert(0, "tests/python")
import stores
out = Path(sys.argv[1])
spec = stores.SPECS["main"]
expected = {}
for container in ("zarr2", "zarr3-sharded", "h5ad-gzip"):
    path = stores.write_store(spec, container, out)
    adata = stores.read_expected(path)
    elements = {}
    for key in spec.keys:
        e = stores.expected_element(adata, key)
        elements[key] = e.toarray() if hasattr(e, "toarray") else e
    expected[str(path)] = {"elements": elements, "obs": adata.obs, "var": adata.var}
with open(out / "expected.pkl", "wb") as f:
    pickle.dump(expected, f)
EOF
  PKG="$OUT/pkg/annstream"
  rm -rf "$OUT/pkg"; mkdir -p "$PKG"
  cp python/annstream/*.py "$PKG/"
  cp "$OUT"/_core*.so "$PKG/"
  cat > "$OUT/memcheck_read.py" <<'EOF'
"""Run under valgrind by tools/valgrind.sh: reads and one loader epoch, checked against anndata."""
import gc
import pickle
import sys

sys.modules["torch"] = None  # the numpy path: importing torch under memcheck takes minutes
import numpy as np
import pandas as pd
import scipy.sparse as sp

import annstream

root, pkg = sys.argv[1], sys.argv[2]
assert annstream.__file__.startswith(pkg), annstream.__file__
with open(f"{root}/expected.pkl", "rb") as f:
    expected = pickle.load(f)
rng = np.random.default_rng(0)
n_checked = 0
for path, exp in expected.items():
    with annstream.open(path, threads=3) as st:
        assert sorted(st.keys()) == sorted(exp["elements"]), (st.keys(), list(exp["elements"]))
        for key, want in exp["elements"].items():
            rows = rng.permutation(len(want))[: max(1, len(want) * 2 // 3)]
            got = st[key].read_rows(rows)
            got = got.toarray() if sp.issparse(got) else got
            np.testing.assert_array_equal(got, want[rows], err_msg=f"{path}: {key}")
            n_checked += 1
        pd.testing.assert_frame_equal(st.read_obs(), exp["obs"], check_dtype=False,
                                      check_categorical=False, check_index_type=False)
        pd.testing.assert_frame_equal(st.read_var(), exp["var"], check_dtype=False,
                                      check_categorical=False, check_index_type=False)
paths = list(expected)
want_x = np.concatenate([expected[p]["elements"]["X"] for p in paths])
ld = annstream.Loader(paths, batch_size=16, chunk_size=4, preload_nchunks=4, seed=3, threads=2,
                      return_index=True)
seen = []
for b in ld:
    np.testing.assert_array_equal(b["X"].toarray(), want_x[b["index"]])
    seen.append(b["index"].copy())
ld.close()
allrows = np.concatenate(seen)
np.testing.assert_array_equal(np.sort(allrows), np.arange(len(want_x)))
del ld, b, st
gc.collect()
print(f"memcheck python: {n_checked} element reads, {len(seen)} batches, {len(allrows)} rows ok")
EOF
  echo "== Python read + one loader epoch under memcheck"
  t0=$(date +%s)
  log="$OUT/memcheck-python.log"
  # Memory errors and definite leaks (less tools/valgrind.supp) set the exit status. Every block
  # still allocated at exit is listed (--show-leak-kinds=all) so that the check below can fail on any
  # that annstream's own code allocated: the script deleted every store, loader and batch, so none
  # may be left, reachable or not. CPython's own blocks alive at exit are not leaks.
  set +e
  PYTHONPATH="$OUT/pkg" PYTHONMALLOC=malloc \
    "${VG[@]}" --errors-for-leak-kinds=definite --show-leak-kinds=all \
    --suppressions="$ROOT/tools/valgrind.supp" --log-file="$log" \
    python "$OUT/memcheck_read.py" "$STORES" "$OUT/pkg" > "$OUT/python.out" 2>&1
  rc=$?
  set -e
  py_ok=1
  python - "$log" "$rc" "$OUT/python.out" <<'EOF_CHECK' || { py_ok=0; fail=1; }
import glob, os, re, sys
log, rc, out = sys.argv[1], int(sys.argv[2]), sys.argv[3]
ours = {os.path.basename(p) for p in glob.glob("src/*/*.c") + ["python/annstream/_core.c"]}
alloc = re.compile(r"^(malloc|calloc|realloc|posix_memalign|aligned_alloc|memalign|strn?dup|"
                   r"ans_(malloc|calloc|realloc|strn?dup|malloc_large|asprintf)|ans_buf_\w+|"
                   r"_?PyMem_\w+|PyObject_(Malloc|Calloc|Realloc))$")
frame = re.compile(r"^==\d+==\s+(?:at|by) 0x[0-9A-F]+: (\S+) \((?:(\S+?):\d+|in .*)\)")
errors, ours_alive = [], []
for rec in re.split(r"\n==\d+== \n", open(log).read()):
    lines = [l for l in rec.splitlines() if l.strip()]
    if not lines:
        continue
    head = re.sub(r"^==\d+== ", "", lines[0])
    if " bytes in " not in head:
        errors.append(rec)  # a memory error (invalid read / write, uninitialised value, ...)
        continue
    if "definitely lost" in head:
        errors.append(rec)
        continue
    for l in lines[1:]:  # the first frame past the allocator: who asked for the block
        m = frame.match(l)
        if m and not alloc.match(m.group(1)):
            if m.group(2) in ours:
                ours_alive.append(rec)
            break
for rec in errors + ours_alive:
    print(rec)
    print()
if ours_alive:
    print(f"memcheck python: {len(ours_alive)} blocks allocated by annstream still alive at exit")
if rc != 0 or errors or ours_alive:
    print(open(out).read())
    print(f"FAIL memcheck python (valgrind exit {rc}, {len(errors)} errors): {log}")
    sys.exit(1)
EOF_CHECK
  if [ "$py_ok" = 1 ]; then echo "ok   $(tail -n1 "$OUT/python.out") ($(( $(date +%s) - t0 ))s)"; fi
fi
if [ "$fail" != 0 ]; then
  echo "== valgrind.sh: FAILED after $(( $(date +%s) - start ))s"
  exit 1
fi
echo "== valgrind.sh: all clean in $(( $(date +%s) - start ))s"
