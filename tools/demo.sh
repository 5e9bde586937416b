#!/usr/bin/env bash
# tools/demo.sh - set up (tools/setup.sh), write a small demo AnnData store with anndata, show it with
# `annstream info`, and read rows from Python.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
bash tools/setup.sh
# shellcheck disable=SC1091
. .venv/bin/activate
python tools/demo.py "${@:-build/demo}"
