#!/usr/bin/env bash
# Closed-loop command latency with the simulated array in its own process, as a real
# device is (bench-loop runs the simulator in the runtime's process, which the oracle
# needs but which shares one interpreter lock with the runtime).
#
#   bash bench/loop_latency.sh [BUNDLE] [SECONDS]     (default demo-run/bundle, 200 s)
#
# Prints the decision-to-command-written, decision-to-acknowledgement and
# decision-to-delivered-sample percentiles from the run's decision log (docs/closed-loop.md).
set -euo pipefail
cd "$(dirname "$0")/.."
BUNDLE=${1:-demo-run/bundle}; SECONDS_RUN=${2:-200}
P=.venv/bin/phosphene; D=$(mktemp -d)
trap 'kill "${SIM:-0}" 2>/dev/null || true; rm -rf "$D"' EXIT
$P simulate stream --pty --kind closed-loop --truth "$D/truth.jsonl" --duration-s $((SECONDS_RUN + 15)) \
   --quiet --json > "$D/sim.json" 2> "$D/sim.err" &
SIM=$!
PTY=""
for _ in $(seq 100); do PTY=$(grep -o '/dev/pts/[0-9]*' "$D/sim.err" | head -1 || true); [ -n "$PTY" ] && break; sleep 0.1; done
[ -n "$PTY" ] || { echo "Error: the simulator did not open a pty" >&2; exit 1; }
# electrode 25 at the virtual cortex's I50 for seed 0; commands as often as the gate allows
$P run "$BUNDLE" --port "$PTY" --mode gated --task threshold_pre --stim-electrode 25 --stim-current-ua 19.18 \
   --stim-count 1000 --min-interval-s 0.5 --max-wait-s 1 --gate-quantile 0.8 --duration-s "$SECONDS_RUN" \
   --out "$D/loop.jsonl" > /dev/null 2> "$D/run.err"
wait "$SIM" || true
.venv/bin/python - "$D/loop.jsonl" <<'PY'
import json, platform, sys
import numpy as np
recs = [json.loads(line) for line in open(sys.argv[1])]
cmds = [r for r in recs if r.get("type") == "command"]
acks = [r for r in recs if r.get("type") == "ack"]
rows = {"decision -> command written (ms)": [c["send_us"] / 1e3 for c in cmds],
        "decision -> acknowledgement read (ms)": [a["ack_ms"] for a in acks],
        "decision -> end of delivered sample, host clock (ms)": [a["delivered_ms"] for a in acks if "delivered_ms" in a]}
print(f"{len(cmds)} commands, {sum(a['status'] == 'delivered' for a in acks)} delivered; "
      f"machine {platform.machine()} ({platform.processor() or 'cpu'})")
print(f"{'':<54}{'p50':>8}{'p99':>8}{'max':>8}")
for k, v in rows.items():
    v = np.asarray(v)
    print(f"{k:<54}{np.percentile(v, 50):8.2f}{np.percentile(v, 99):8.2f}{v.max():8.2f}")
print(json.dumps({k: {"n": len(v), "p50": float(np.percentile(v, 50)), "p99": float(np.percentile(v, 99)),
                      "max": float(np.max(v))} for k, v in rows.items()}))
PY
