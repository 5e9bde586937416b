#!/usr/bin/env bash
# tools/setup_annbatch.sh - make the Python that has annbatch, for the test that reads annstream's
# collections with annbatch's own loader (tests/python/test_convert.py::test_annbatch_loader_reads_output)
# and for the writer / loader benchmarks.
#
#   tools/setup_annbatch.sh [--upgrade]
#
# annbatch needs Python >= 3.12 and the test venv (.venv) is 3.11, so annbatch lives in its own venv:
# <repo>/.bench-annbatch-venv (git-ignored; ANNBATCH_VENV overrides), made from pyenv's Python 3.12
# (ANNBATCH_PYTHON overrides), with `annbatch zarrs psutil` from PyPI (no torch). The work is done by
# bench/setup_annbatch.sh: idempotent, a second run only checks the imports (about a second).
# Prints the venv's python on the last line of stdout; the test finds it there by default, or through
# ANS_ANNBATCH_PYTHON. Best effort for tools/test.sh: when this fails (no Python 3.12, no network),
# the test skips with the reason.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
exec bash "$ROOT/bench/setup_annbatch.sh" "$@"
