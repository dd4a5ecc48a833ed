"""Input-health benchmark: cost per block, false alarms on healthy streams, detection times.

    python bench/bench_health.py              # 10 min of healthy stream per session kind (~2 min)
    python bench/bench_health.py --quick      # 2 min per kind (< 1 min)
    python bench/bench_health.py --minutes 30

The reference is calibration_stats on 3 x 20 s of resting virtual cortex over 3 days (as
quantize would compute it on resting sessions); the streams are other sessions and days of
the same cortex, rounded to the wire's 0.02 uV per LSB and fed in 16-sample blocks, with
an assessment every 0.256 s. Faults start 10 s into a psychometric stream. Writes
bench/results/health.json.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import machine, percentiles_us, save, table

from phosphene.cortex import VirtualCortex
from phosphene.edge.health import InputHealth, calibration_stats
from phosphene.firmware_bridge.protocol import quantize_uv, samples_to_uv

FS, BLOCK, EVERY = 1000.0, 16, 16
SCALE_UV = 0.02


def wire(x: np.ndarray) -> np.ndarray:
    return samples_to_uv(quantize_uv(x, SCALE_UV)[0], SCALE_UV)


def healthy_run(ref: dict, cortex: VirtualCortex, kind: str, day: int, idx: int, minutes: float) -> dict:
    stream = cortex.stream(kind, day=day, session_index=idx)
    health = InputHealth(96, ref, FS)
    update_s, assess_s = [], []
    reports = not_ok = 0
    worst = 0.0
    faults: dict[str, int] = {}
    left = int(minutes * 60 * FS)
    while left > 0:
        x = wire(stream.read(min(60_000, left))[0])
        left -= x.shape[0]
        for i in range(0, x.shape[0], BLOCK):
            b = x[i:i + BLOCK]
            t0 = time.perf_counter()
            health.update(b)
            update_s.append(time.perf_counter() - t0)
            if (i // BLOCK) % EVERY == EVERY - 1:
                t0 = time.perf_counter()
                r = health.assess()
                assess_s.append(time.perf_counter() - t0)
                if r.warming_up:
                    continue
                reports += 1
                worst = max(worst, r.ood_score)
                if not r.ok:
                    not_ok += 1
                    for name in ("dead", "flat", "saturated"):
                        for c in getattr(r, name):
                            faults[f"{name} {c}"] = faults.get(f"{name} {c}", 0) + 1
    return {"kind": kind, "day": day, "minutes": minutes, "reports": reports, "not_ok": not_ok,
            "max_ood_score": round(worst, 3), "faults": faults,
            "update_us": percentiles_us(update_s), "assess_us": percentiles_us(assess_s)}


def detection(ref: dict, x: np.ndarray, t_fault: int, name: str, check) -> dict:
    health = InputHealth(96, ref, FS)
    first = None
    false_before = 0
    for i in range(0, x.shape[0], BLOCK):
        health.update(x[i:i + BLOCK])
        if (i // BLOCK) % EVERY == EVERY - 1:
            t = (i + BLOCK) / FS
            r = health.assess(t)
            if t <= t_fault / FS:
                false_before += int(not r.ok)
            elif first is None and check(r):
                first = t
    return {"fault": name, "detected_after_s": None if first is None else round(first - t_fault / FS, 3),
            "false_alarms_before": false_before, "last": r.status_text()}


def main(argv: list[str]) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="2 min of healthy stream per kind")
    ap.add_argument("--minutes", type=float, default=None, help="healthy stream per kind")
    args = ap.parse_args(argv)
    minutes = args.minutes or (2.0 if args.quick else 10.0)
    cortex = VirtualCortex(seed=0)
    recs = [cortex.stream("resting", day=d, session_index=d).read(20_000)[0] for d in range(3)]
    t0 = time.perf_counter()
    ref = calibration_stats(recs, sample_rate_hz=FS)
    calib_s = time.perf_counter() - t0

    runs = [healthy_run(ref, cortex, kind, day, idx, minutes)
            for kind, day, idx in (("resting", 1, 41), ("psychometric", 0, 42), ("threshold", 1, 43))]
    rows = [{"stream": f"{r['kind']} day {r['day']}", "minutes": r["minutes"], "reports": r["reports"],
             "not ok": r["not_ok"], "max OOD": r["max_ood_score"],
             "update us p50": r["update_us"]["p50"], "update us p99": r["update_us"]["p99"],
             "update us mean": r["update_us"]["mean"], "assess us p50": r["assess_us"]["p50"]}
            for r in runs]
    print(table(rows, list(rows[0]), "healthy streams (false alarms)"))

    x = wire(cortex.stream("psychometric", day=1, session_index=21).read(30_000)[0])
    t_fault = 10_000
    rng = np.random.default_rng(5)
    live = np.setdiff1d(np.arange(96), ref["dead_at_calibration"])
    killed = np.sort(rng.choice(live, 8, replace=False))
    sd = np.asarray(ref["channels"]["robust_sd_uv"], np.float32)

    def after(change):
        y = x.copy()
        y[t_fault:] = change(y[t_fault:])
        return y

    def kill(y):
        y = y.copy()
        y[:, killed] = wire(0.2 + 0.05 * rng.standard_normal((y.shape[0], killed.size)))
        return y

    def clip(y):
        y = y.copy()
        c = live[5]
        y[:, c] = np.minimum(y[:, c], np.percentile(y[:, c], 70))
        return y

    def stuck(y):
        y = y.copy()
        y[:, live[7]] = y[0, live[7]]
        return y

    faults = [
        detection(ref, after(kill), t_fault, "8 channels dead (0.2 +- 0.05 uV)",
                  lambda r: set(r.dead) >= {int(c) for c in killed}),
        detection(ref, after(lambda y: y * 2), t_fault, "gain x2", lambda r: r.ood),
        detection(ref, after(lambda y: y * 0.5), t_fault, "gain x0.5", lambda r: r.ood),
        detection(ref, after(lambda y: y * 1.5), t_fault, "gain x1.5", lambda r: r.ood),
        detection(ref, after(lambda y: y + 12 * sd), t_fault, "median +12 reference SDs", lambda r: r.ood),
        detection(ref, after(clip), t_fault, "1 channel clipped at its 70th percentile",
                  lambda r: int(live[5]) in r.saturated),
        detection(ref, after(stuck), t_fault, "1 channel constant", lambda r: int(live[7]) in r.flat),
    ]
    print()
    print(table([{"fault (from 10 s)": f["fault"], "detected after s": f["detected_after_s"],
                  "false alarms before": f["false_alarms_before"], "last status": f["last"]}
                 for f in faults], ["fault (from 10 s)", "detected after s", "false alarms before",
                                    "last status"], "detection"))
    path = save("health", {"calibration_s": round(calib_s, 3), "reference_bytes": len(str(ref)),
                           "healthy": runs, "faults": faults, "thresholds": ref["thresholds"],
                           "machine": machine()})
    print(f"\nresults: {path}")
    ok = all(r["not_ok"] == 0 for r in runs) and all(f["detected_after_s"] is not None
                                                     and f["detected_after_s"] <= 3.0 for f in faults
                                                     if f["fault"] != "gain x1.5")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
