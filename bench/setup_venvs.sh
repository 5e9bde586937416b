#!/usr/bin/env bash
# Create or update the benchmark virtual environment, idempotently and quietly.
#
#   bench/setup_venvs.sh [--upgrade] [--skip-annstream] [--allow-missing-annstream]
#
# The venv (default: <repo>/.bench-venv, git-ignored; override with BENCH_VENV) gets Python 3.12
# (BENCH_PYTHON overrides the interpreter), the comparison readers (zarr-python, zarrs, anndata), and
# annstream built from this checkout.  A second run only reinstalls what changed:
#   - the third-party packages when the requirement list below changes (or with --upgrade, which
#     also pulls the newest zarrs/zarr/anndata from PyPI);
#   - annstream when any file meson builds it from (meson.build, src/, include/, python/, ...)
#     changes.  The meson build directory is kept in <repo>/.bench-build, so rebuilds are incremental.
# annstream's build needs the Debian packages libblosc-dev libzstd-dev liblz4-dev zlib1g-dev
# libhdf5-dev pkg-config.
#
# Prints the venv's python path on the last line of stdout.
set -euo pipefail

REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
VENV="${BENCH_VENV:-$REPO/.bench-venv}"
BUILD_DIR="$REPO/.bench-build"
UPGRADE=0
SKIP_ANNSTREAM=0
ALLOW_MISSING=0
for arg in "$@"; do
  case "$arg" in
    --upgrade) UPGRADE=1 ;;
    --skip-annstream) SKIP_ANNSTREAM=1 ;;
    --allow-missing-annstream) ALLOW_MISSING=1 ;;
    -h|--help) sed -n '2,17p' "$0"; exit 0 ;;
    *) echo "setup_venvs.sh: unknown argument $arg" >&2; exit 2 ;;
  esac
done

# Third-party requirements of the benchmarks. Floors only: the newest release is what we compare to.
REQS=(
  "numpy>=1.24" "scipy>=1.10" "pandas>=2.0" "psutil"
  "anndata>=0.12" "zarr>=3.1" "zarrs>=0.2"
  "meson-python>=0.15" "meson>=1.1" "ninja"
)

log() { echo "[setup_venvs] $*" >&2; }

pick_python() {
  if [[ -n "${BENCH_PYTHON:-}" ]]; then echo "$BENCH_PYTHON"; return; fi
  local c
  for c in "$(pyenv prefix 3.12.1 2>/dev/null)/bin/python" /root/.pyenv/versions/3.12*/bin/python \
           "$(command -v python3.12 || true)" "$(command -v python3 || true)"; do
    if [[ -x "$c" ]] && "$c" -c 'import sys; sys.exit(not ((3, 11) <= sys.version_info[:2] < (3, 14)))' 2>/dev/null; then
      echo "$c"; return
    fi
  done
  log "no Python 3.11-3.13 found; set BENCH_PYTHON"; exit 1
}

# 1. the venv itself
if ! "$VENV/bin/python" -c 'import sys' >/dev/null 2>&1; then
  PY="$(pick_python)"
  log "creating $VENV with $("$PY" --version 2>&1)"
  rm -rf "$VENV"
  "$PY" -m venv "$VENV"
  "$VENV/bin/python" -m pip install -q --upgrade pip >/dev/null 2>&1 || true
fi
VPY="$VENV/bin/python"
PIP=("$VPY" -m pip -q --disable-pip-version-check)

# 2. third-party packages
REQ_STAMP="$VENV/.bench-reqs"
REQ_SIG="$(printf '%s\n' "${REQS[@]}")"
if [[ $UPGRADE == 1 || ! -f "$REQ_STAMP" || "$(cat "$REQ_STAMP")" != "$REQ_SIG" ]]; then
  log "installing benchmark requirements"
  if [[ $UPGRADE == 1 ]]; then
    "${PIP[@]}" install --upgrade "${REQS[@]}" 2> >(grep -v "^WARNING: Location" >&2)
  else
    "${PIP[@]}" install "${REQS[@]}" 2> >(grep -v "^WARNING: Location" >&2)
  fi
  printf '%s' "$REQ_SIG" > "$REQ_STAMP"
fi

# 3. annstream from this checkout
if [[ $SKIP_ANNSTREAM == 0 ]]; then
  SRC_STAMP="$VENV/.bench-annstream-src"
  src_sig() {
    cd "$REPO"
    {
      # tracked and untracked-but-not-ignored files that meson builds from (read-only git query)
      git ls-files -co --exclude-standard -- meson.build meson_options.txt pyproject.toml src include python 2>/dev/null \
        || find meson.build meson_options.txt pyproject.toml src include python -type f
    } | LC_ALL=C sort | while read -r f; do [[ -f "$f" ]] && sha1sum "$f"; done | sha1sum | cut -d' ' -f1
  }
  SIG="$(src_sig)"
  if [[ ! -f "$SRC_STAMP" || "$(cat "$SRC_STAMP")" != "$SIG" ]] || ! "$VPY" -c 'import annstream' >/dev/null 2>&1; then
    log "building annstream from $REPO"
    BLOG="$VENV/.bench-annstream-build.log"
    if (cd "$REPO" && "${PIP[@]}" install --no-build-isolation --no-deps --force-reinstall \
          -Cbuild-dir="$BUILD_DIR" . ) >"$BLOG" 2>&1; then
      echo "$SIG" > "$SRC_STAMP"
    else
      rm -f "$SRC_STAMP"
      "${PIP[@]}" uninstall -y annstream >/dev/null 2>&1 || true  # never benchmark a stale build
      if [[ $ALLOW_MISSING == 1 ]]; then
        log "annstream did not build (see $BLOG); continuing without it"
      else
        tail -n 30 "$BLOG" >&2
        log "annstream did not build (full log: $BLOG)"
        exit 1
      fi
    fi
  fi
fi

echo "$VPY"
