"""Blackrock import: speed and peak memory of broadband -> 1 kHz MUA, by recording length.

The claim under test: `phosphene import blackrock` reads the file in blocks, so peak
memory stays flat as the recording grows (files larger than memory import). Each run
writes a 96-channel 30 kHz .ns5 of noise in blocks (never whole in memory), then imports
it in a fresh subprocess so peak RSS is the import's alone.

    python bench/bench_io.py            # 10 s, 60 s and 300 s recordings (300 s = 1.7 GB)
    python bench/bench_io.py --quick    # 10 s and 30 s
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(HERE.parent / "tests" / "io"))
from _common import save, table  # noqa: E402 (after the sys.path entry above)
from nsx_writer import block_header, nsx_header  # noqa: E402 (after the sys.path entry above)

N_CHANNELS = 96
RATE_HZ = 30_000

CHILD = r"""
import json, resource, sys, time  # noqa: E402 (after the sys.path entry above)
from phosphene.train.importers import import_blackrock  # noqa: E402 (after the sys.path entry above)
nsx, out = sys.argv[1], sys.argv[2]
t0 = time.perf_counter()
report = import_blackrock(nsx, out=out, log=lambda m: None)
elapsed = time.perf_counter() - t0
print(json.dumps({"seconds": elapsed, "mua_samples": report.sessions[0]["n_samples"],
                  "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}))
"""


def write_recording(path: Path, seconds: float, block_s: float = 2.0) -> int:
    """A 96-channel noise .ns5 written block by block; returns its size in bytes."""
    rng = np.random.default_rng(0)
    n = int(seconds * RATE_HZ)
    with open(path, "wb") as f:
        f.write(nsx_header(N_CHANNELS))
        f.write(block_header(n, 0))
        step = int(block_s * RATE_HZ)
        for start in range(0, n, step):
            m = min(step, n - start)
            f.write((rng.standard_normal((m, N_CHANNELS), dtype=np.float32) * 160).astype("<i2").tobytes())
    return path.stat().st_size


def run(seconds: float, workdir: Path) -> dict:
    nsx = workdir / f"rec{seconds:g}.ns5"
    size = write_recording(nsx, seconds)
    proc = subprocess.run([sys.executable, "-c", CHILD, str(nsx), str(workdir / f"ds{seconds:g}")],
                          check=True, capture_output=True, text=True)
    row = json.loads(proc.stdout.strip().splitlines()[-1])
    nsx.unlink()
    return {"recording_s": seconds, "file_mb": size / 1e6, "import_s": row["seconds"],
            "realtime_x": seconds / row["seconds"], "peak_rss_mb": row["peak_rss_mb"],
            "mua_samples": row["mua_samples"]}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="10 s and 30 s recordings only")
    ap.add_argument("--seconds", type=float, nargs="*", default=None)
    ap.add_argument("--workdir", default=None, help="where to write the recordings")
    args = ap.parse_args()
    lengths = args.seconds or ([10.0, 30.0] if args.quick else [10.0, 60.0, 300.0])
    with tempfile.TemporaryDirectory(dir=args.workdir) as tmp:
        rows = [run(s, Path(tmp)) for s in lengths]
    print(table(rows, ["recording_s", "file_mb", "import_s", "realtime_x", "peak_rss_mb"],
                f"Blackrock .ns5 import ({N_CHANNELS} channels, {RATE_HZ // 1000} kHz -> 1 kHz MUA)"))
    path = save("io", {"rows": rows, "channels": N_CHANNELS, "rate_hz": RATE_HZ,
                       "claim": "peak RSS flat in recording length (block-wise import)"})
    print(f"\nJSON: {path}")


if __name__ == "__main__":
    main()
