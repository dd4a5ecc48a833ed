"""Run every bench/bench_*.py in turn (`make bench`); each prints a table and writes JSON.

    python bench/run_all.py            # full runs
    python bench/run_all.py --quick    # each benchmark's quick mode (< 1 min each)
    python bench/run_all.py wire edge  # only these
"""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent


def main(argv: list[str]) -> int:
    quick = "--quick" in argv
    only = [a for a in argv if not a.startswith("-")]
    scripts = sorted(HERE.glob("bench_*.py"))
    if only:
        scripts = [s for s in scripts if s.stem.removeprefix("bench_") in only]
    failed = []
    for script in scripts:
        print(f"\n### {script.name}{' --quick' if quick else ''}", flush=True)
        t0 = time.perf_counter()
        rc = subprocess.call([sys.executable, str(script), *(["--quick"] if quick else [])])
        print(f"### {script.name}: exit {rc} in {time.perf_counter() - t0:.0f} s", flush=True)
        if rc:
            failed.append(script.name)
    print(f"\nresults in {HERE / 'results'}; failed: {', '.join(failed) or 'none'}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
