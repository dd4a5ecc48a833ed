"""Dataset generation: time and peak memory for the virtual cortex's resting data.

The issue's target: the `paper` preset's 14.6 h of resting data in minutes on this 2-core
machine with peak memory under 2 GB. Each size runs in a fresh subprocess so peak RSS is
that run's alone.

    python bench/bench_dataset.py             # 14.6 h (paper preset, float16, ~10 GB on disk)
    python bench/bench_dataset.py --quick     # 0.5 h
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import save, table

CHILD = r"""
import json, resource, sys, time
from dataclasses import replace
from phosphene.cortex import PRESETS, generate_dataset
hours, out = float(sys.argv[1]), sys.argv[2]
spec = PRESETS["paper"]
spec = replace(spec, resting_session_s=hours * 3600 / spec.resting_sessions,
               psychometric_sessions=0, psychometric_trials=0, threshold_sessions=0,
               threshold_trials=0)
t0 = time.perf_counter()
ds = generate_dataset(out, preset=spec, seed=0)
elapsed = time.perf_counter() - t0
samples = sum(s.n_samples for s in ds.sessions)
print(json.dumps({"hours": hours, "seconds": elapsed, "sessions": len(ds.sessions),
                  "samples_per_channel": samples, "channels": ds.n_channels,
                  "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}))
"""


def run(hours: float, workdir: Path) -> dict:
    out = workdir / f"rest-{hours:g}h"
    proc = subprocess.run([sys.executable, "-c", CHILD, str(hours), str(out)], check=True,
                          capture_output=True, text=True)
    row = json.loads(proc.stdout.strip().splitlines()[-1])
    row["disk_gb"] = sum(f.stat().st_size for f in out.rglob("*") if f.is_file()) / 1e9
    row["minutes"] = row["seconds"] / 60
    row["realtime_x"] = hours * 3600 / row["seconds"]
    shutil.rmtree(out)
    return row


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="0.5 h instead of 14.6 h")
    ap.add_argument("--hours", type=float, nargs="*", default=None)
    ap.add_argument("--workdir", default=None, help="where to write (needs ~10 GB for 14.6 h)")
    args = ap.parse_args()
    hours = args.hours or ([0.5] if args.quick else [0.5, 14.6])
    with tempfile.TemporaryDirectory(dir=args.workdir) as tmp:
        rows = [run(h, Path(tmp)) for h in hours]
    print(table(rows, ["hours", "sessions", "channels", "minutes", "realtime_x", "peak_rss_mb", "disk_gb"],
                "Virtual cortex: resting-data generation (paper preset, float16)"))
    path = save("dataset", {"rows": rows, "target": "14.6 h in minutes, peak RSS < 2048 MB"})
    print(f"\nJSON: {path}")


if __name__ == "__main__":
    main()
