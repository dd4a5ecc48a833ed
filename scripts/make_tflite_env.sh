#!/usr/bin/env bash
# A second virtual environment with tflite-runtime 2.14, the design card's interpreter.
#
# tflite-runtime 2.14 (its last release) needs numpy < 2 (docs/toolchain.md: under numpy 2 its
# Interpreter() fails with "_ARRAY_API not found"), so it cannot share the workstation's
# .venv. This env holds only what the edge path needs: numpy<2, tflite-runtime, pyserial,
# click and phosphene itself (editable, --no-deps: no torch/tensorflow).
#
#   scripts/make_tflite_env.sh [VENV_DIR]      # default: .venv-tflite in the repository
#   .venv-tflite/bin/phosphene verify bundle --runtime tflite-runtime
#
# PYTHON selects the interpreter the env is made from (default: python3; must be 3.11 for
# the cp311 tflite-runtime wheel, or another version that wheel exists for).
set -euo pipefail
ROOT="$(cd "$(dirname "$0")/.." && pwd)"
VENV="${1:-$ROOT/.venv-tflite}"
PYTHON="${PYTHON:-python3}"
PIP_FLAGS=(-q --disable-pip-version-check)

if [ ! -x "$VENV/bin/python" ]; then
    "$PYTHON" -m venv "$VENV"
fi
"$VENV/bin/python" -m pip install "${PIP_FLAGS[@]}" "numpy<2" "tflite-runtime==2.14.0" \
    "pyserial>=3.5" "click>=8.1" "cryptography>=42"
"$VENV/bin/python" -m pip install "${PIP_FLAGS[@]}" --no-deps -e "$ROOT"
"$VENV/bin/python" - <<'PY'
import numpy
from tflite_runtime.interpreter import Interpreter  # noqa: F401  (fails without numpy<2)
assert numpy.__version__.startswith("1."), numpy.__version__
print(f"tflite-runtime env ready: numpy {numpy.__version__}")
PY
