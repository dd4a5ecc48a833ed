#!/usr/bin/env bash
# `make arm64-check`: phosphene's edge path in an emulated arm64 Python (qemu-user), against x86.
#
#   bash arm64/check.sh                      # demo-run/bundle if present, else a tiny bundle
#   bash arm64/check.sh --bundle DIR         # any bundle
#   bash arm64/check.sh --quick              # the CI version (parity, verify, short bench)
#
# Builds or reuses the arm64 environment (arm64/build_env.sh, cached in arm64/.cache/), then
# arm64/check.py runs verify, bench, the x86-vs-arm64 parity and a pty-fed `phosphene run`;
# the report lands in arm64/.cache/check/report.json. docs/deploy.md, "Boards (arm64)".
set -euo pipefail
REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
HOST_PY="${PHOSPHENE_HOST_PYTHON:-$REPO/.venv/bin/python}"
start_s=$SECONDS
bash "$REPO/arm64/build_env.sh" > /dev/null
"$HOST_PY" "$REPO/arm64/check.py" "$@"
echo "[arm64 check] wall time including the environment: $((SECONDS - start_s)) s" >&2
