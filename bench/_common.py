"""Shared helpers for the benchmarks: machine description, tables, JSON results."""

from __future__ import annotations

import json
import os
import platform
import resource
import sys
from pathlib import Path

import numpy as np

RESULTS = Path(__file__).resolve().parent / "results"


def machine() -> dict:
    from phosphene.edge.stats import cpu_name

    cpu = cpu_name()
    return {"cpu": cpu, "cores": os.cpu_count(), "machine": platform.machine(),
            "python": platform.python_version(), "numpy": np.__version__,
            "system": f"{platform.system()} {platform.release()}"}


def peak_rss_mb() -> float:
    """Peak resident memory of this process (Linux reports KiB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def percentiles_us(samples_s) -> dict:
    a = np.asarray(samples_s, dtype=float) * 1e6
    return {"mean": float(a.mean()), "std": float(a.std()), "p50": float(np.percentile(a, 50)),
            "p90": float(np.percentile(a, 90)), "p99": float(np.percentile(a, 99)),
            "max": float(a.max()), "n": int(a.size)}


def table(rows: list[dict], columns: list[str], title: str = "") -> str:
    out = [title, "=" * len(title)] if title else []
    cells = [[_fmt(r.get(c, "")) for c in columns] for r in rows]
    widths = [max(len(c), *(len(row[i]) for row in cells)) if cells else len(c)
              for i, c in enumerate(columns)]
    out.append("  ".join(c.ljust(w) for c, w in zip(columns, widths)))
    out.append("  ".join("-" * w for w in widths))
    out += ["  ".join(v.rjust(w) for v, w in zip(row, widths)) for row in cells]
    return "\n".join(out)


def _fmt(v) -> str:
    if isinstance(v, float):
        return f"{v:,.3g}" if abs(v) < 100 else f"{v:,.0f}"
    return str(v)


def save(name: str, result: dict) -> Path:
    RESULTS.mkdir(parents=True, exist_ok=True)
    path = RESULTS / f"{name}.json"
    payload = {"benchmark": name, "machine": machine(), "argv": sys.argv[1:], **result}
    tmp = path.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(payload, indent=2) + "\n")
    os.replace(tmp, path)
    return path


def bench_bundle_path(path: str | None, tmp: Path) -> tuple[Path, str]:
    """(bundle, what it is): the one given, else the demo's (demo-run/bundle), else the
    tests' tiny bundle built in `tmp` (and said so: its figures are not the demo bundle's)."""
    if path:
        return Path(path), "given"
    root = Path(__file__).resolve().parent.parent
    demo = root / "demo-run" / "bundle"
    if demo.is_dir():
        return demo, "demo (demo-run/bundle)"
    print("no demo bundle at demo-run/bundle: building the tests' tiny bundle instead "
          "(its figures are NOT the demo bundle's)", file=sys.stderr)
    sys.path.insert(0, str(root / "tests" / "edge"))
    from tiny_bundle import make_tiny_bundle

    return make_tiny_bundle(tmp / "tiny-bundle"), "tiny test bundle (no demo bundle found)"

