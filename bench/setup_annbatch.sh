#!/usr/bin/env bash
# Create or update the annbatch comparison venv, idempotently and quietly.
#
#   bench/setup_annbatch.sh [--upgrade]
#
# The venv (default <repo>/.bench-annbatch-venv, git-ignored; override with ANNBATCH_VENV) gets
# Python 3.12 from pyenv (ANNBATCH_PYTHON overrides; 3.13 is tried next) and
#   annbatch zarrs psutil
# from PyPI, nothing else: annbatch 0.3.1 needs no torch (torch is the `torch` extra, which we do
# NOT install: the benchmark uses Loader(to=None), i.e. scipy CSR batches).  The script refuses to
# continue if torch ended up in the venv anyway (a multi-GB CUDA build).  A second run does nothing
# unless the requirement list changes or --upgrade is given.  The installed versions are written to
# <venv>/.annbatch-versions.json (and printed to stderr when they change).
#
# Prints the venv's python path on the last line of stdout.
set -euo pipefail

REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
VENV="${ANNBATCH_VENV:-$REPO/.bench-annbatch-venv}"
UPGRADE=0
for arg in "$@"; do
  case "$arg" in
    --upgrade) UPGRADE=1 ;;
    -h|--help) sed -n '2,15p' "$0"; exit 0 ;;
    *) echo "setup_annbatch.sh: unknown argument $arg" >&2; exit 2 ;;
  esac
done

# Floors only: the newest release is what we compare to.
REQS=("annbatch>=0.3.1" "zarrs>=0.2.1" "psutil")

log() { echo "[setup_annbatch] $*" >&2; }

pick_python() {
  if [[ -n "${ANNBATCH_PYTHON:-}" ]]; then echo "$ANNBATCH_PYTHON"; return; fi
  local c
  for c in /root/.pyenv/versions/3.12.1/bin/python /root/.pyenv/versions/3.12*/bin/python \
           /root/.pyenv/versions/3.13*/bin/python "$(command -v python3.12 || true)" "$(command -v python3.13 || true)"; do
    if [[ -x "$c" ]] && "$c" -c 'import sys; sys.exit(not ((3, 12) <= sys.version_info[:2] < (3, 14)))' 2>/dev/null; then
      echo "$c"; return
    fi
  done
  log "no Python 3.12/3.13 found (annbatch needs >= 3.12); set ANNBATCH_PYTHON"; exit 1
}

if ! "$VENV/bin/python" -c 'import sys' >/dev/null 2>&1; then
  PY="$(pick_python)"
  log "creating $VENV with $("$PY" --version 2>&1)"
  rm -rf "$VENV"
  "$PY" -m venv "$VENV"
  "$VENV/bin/python" -m pip install -q --disable-pip-version-check --upgrade pip >/dev/null 2>&1 || true
fi
VPY="$VENV/bin/python"
PIP=("$VPY" -m pip -q --disable-pip-version-check)

STAMP="$VENV/.annbatch-reqs"
SIG="$(printf '%s\n' "${REQS[@]}")"
if [[ $UPGRADE == 1 || ! -f "$STAMP" || "$(cat "$STAMP")" != "$SIG" ]] || ! "$VPY" -c 'import annbatch, zarrs, psutil' >/dev/null 2>&1; then
  log "installing ${REQS[*]}"
  UP=(); [[ $UPGRADE == 1 ]] && UP=(--upgrade)
  "${PIP[@]}" install "${UP[@]}" "${REQS[@]}" 2> >(grep -v "^WARNING: Location" >&2)
  if "$VPY" -c 'import importlib.util, sys; sys.exit(importlib.util.find_spec("torch") is None)' 2>/dev/null; then
    log "torch got installed into $VENV; it should not be (annbatch's torch is an extra). Aborting."
    exit 1
  fi
  printf '%s' "$SIG" > "$STAMP"
fi

VERS="$VENV/.annbatch-versions.json"
NEW="$("$VPY" - <<'EOF'
import json, sys
from importlib.metadata import version, PackageNotFoundError
out = {"python": sys.version.split()[0]}
for p in ["annbatch", "zarr", "zarrs", "anndata", "numpy", "scipy", "pandas", "dask", "numcodecs", "psutil", "torch"]:
    try:
        out[p] = version(p)
    except PackageNotFoundError:
        out[p] = None
print(json.dumps(out, sort_keys=True))
EOF
)"
if [[ ! -f "$VERS" || "$(cat "$VERS")" != "$NEW" ]]; then
  echo "$NEW" > "$VERS"
  log "versions: $NEW"
fi

echo "$VPY"
