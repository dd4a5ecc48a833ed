#!/usr/bin/env bash
# The qemu/interpreter crash matrix behind docs/deploy.md "Boards (arm64)" (not part of the check).
# Installs Debian bookworm's qemu-user-static 7.2 with apt-get (root), builds both set-ups,
# runs the quick check once for its tiny bundle, then arm64/findings.py (a few minutes).
set -euo pipefail
REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
HOST_PY="${PHOSPHENE_HOST_PYTHON:-$REPO/.venv/bin/python}"
CACHE="${PHOSPHENE_ARM64_CACHE:-$REPO/arm64/.cache}"
bash "$REPO/arm64/build_env.sh" > /dev/null
PHOSPHENE_ARM64_QEMU=bookworm bash "$REPO/arm64/build_env.sh" > /dev/null
[[ -f "$CACHE/check/tiny-bundle/model.tflite" ]] || "$HOST_PY" "$REPO/arm64/check.py" --quick
"$HOST_PY" "$REPO/arm64/findings.py"
