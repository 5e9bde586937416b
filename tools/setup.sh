#!/usr/bin/env bash
# tools/setup.sh - install what annstream needs on a fresh Debian machine, idempotently:
#   1. the C libraries (Debian -dev packages) and compilers,
#   2. a virtual environment .venv with the pinned Python packages,
#   3. annstream itself, built by meson-python into that venv.
# Sourced by tools/test.sh and tools/demo.sh; safe to run again (does nothing that is already done).
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"

# clang-19 + libclang-rt-19-dev: the ThreadSanitizer tier (tools/tsan.sh); valgrind: tools/valgrind.sh
APT_PACKAGES=(build-essential pkg-config clang libclang-rt-14-dev clang-19 libclang-rt-19-dev valgrind
              libzstd-dev liblz4-dev zlib1g-dev libblosc-dev libhdf5-dev)
missing=()
for p in "${APT_PACKAGES[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if ((${#missing[@]})); then
  echo "setup: installing Debian packages: ${missing[*]}"
  SUDO=""; [ "$(id -u)" = 0 ] || SUDO="sudo"
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi

PY="${ANNSTREAM_PYTHON:-python3}"
if [ ! -x .venv/bin/python ]; then
  echo "setup: creating .venv with $($PY --version)"
  "$PY" -m venv .venv
fi
# shellcheck disable=SC1091
. .venv/bin/activate
stamp=.venv/.requirements-dev.stamp
if ! cmp -s tools/requirements-dev.txt "$stamp" 2>/dev/null; then
  echo "setup: installing Python packages (tools/requirements-dev.txt)"
  python -m pip install -q --upgrade pip
  python -m pip install -q -r tools/requirements-dev.txt
  cp tools/requirements-dev.txt "$stamp"
fi

echo "setup: building and installing annstream into .venv"
python -m pip install -q --no-build-isolation --no-deps -Cbuild-dir=build/py .
