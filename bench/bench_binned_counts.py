"""Binned spike counts through the pipeline: the normaliser's clip and the raw-window baseline.

Poisson counts with known rates (tests/io/binned_counts.py: log-uniform 0.3-40 spikes/s,
so many units are sparse; a slow shared gain; a 0/1 label that raises 30% of the units'
rate for 300 ms after each event) are imported with `import_array` (50 ms bins, a 120 s
resting part cut off with --split-at, window 0-400 ms after each event) and run through
three normalisers: "mua" (the paper's robust median/MAD with its 0.01 floor: what binned
imports got before issue 16), "robust_poisson" (median/MAD with the Poisson floor) and
"counts" (rolling mean/SD with the Poisson floor: what a binned import records now).
For each it reports

- the fraction of normalised values at the clip (+-8), over every sample after warm-up;
- the balanced accuracy [bootstrap 95% CI] of the project's own probe (`fit_probe`: L2
  logistic regression, C by blocked CV) on the pipeline's raw windows (the probe's "raw"
  baseline) and on the per-unit window mean, against the same probes on a plain z-score
  of the same windows (each unit's mean and SD over the session), on the paper's split
  (the last 20% of trials evaluate), pooled over seeds, with the paired difference.

    python bench/bench_binned_counts.py            # 3 seeds, ~1.5 min each on 2 cores
    python bench/bench_binned_counts.py --quick    # 1 short seed (a smoke run)

Writes bench/results/binned_counts.json.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests" / "io"))

from binned_counts import make_counts  # noqa: E402 (after the sys.path entry above)

from phosphene.dataset import Dataset  # noqa: E402 (after the sys.path entry above)
from phosphene.metrics import balanced_accuracy, bootstrap_ci, paired_comparison  # noqa: E402 (after the sys.path entry above)
from phosphene.signal import NormaliserConfig  # noqa: E402 (after the sys.path entry above)


def _probe(F: np.ndarray, y: np.ndarray, train: np.ndarray, trials, seed: int) -> np.ndarray:
    from phosphene.train.probe import blocked_folds, fit_probe, sklearn_threads

    tr = trials.select(train)
    with sklearn_threads():
        pipe = fit_probe(F[train], y[train], folds=blocked_folds(tr.session, tr.onset_sample),
                         seed=seed, label="bench")
    return pipe.predict(F[~train]).astype(np.int64)


VARIANTS = {  # name -> the normaliser the pipeline runs on the imported counts
    "mua": lambda bin_ms: NormaliserConfig(),  # before issue 16: the paper's robust MUA floor
    "robust_poisson": lambda bin_ms: NormaliserConfig.for_counts(bin_ms, method="robust"),
    "counts": lambda bin_ms: NormaliserConfig.for_counts(bin_ms),  # what a binned import records
}


def run_seed(seed: int, args, work: Path) -> dict:
    import shutil

    from phosphene.train.data import trial_windows
    from phosphene.train.importers import import_array

    c = make_counts(n_units=args.units, bin_ms=args.bin_ms, rest_s=args.rest_s, task_s=args.task_s,
                    iti_s=args.iti_s, gain=args.gain, seed=seed)
    np.save(work / "counts.npy", c.counts)
    c.trials_csv(work / "events.csv", label_column="choice")
    out: dict = {"seed": seed, "n_units": args.units, "n_events": len(c.labels),
                 "sparse_units_below_1hz": int((c.rates_hz < 1.0).sum())}
    preds: dict = {}
    ds_path = work / "ds"
    import_array(work / "counts.npy", out=ds_path, bin_ms=args.bin_ms,
                 trials_csv=work / "events.csv", label_column="choice",
                 window_offset_ms=0, window_ms=args.window_ms, split_at=args.rest_s,
                 log=lambda m: None)
    ds = Dataset.open(ds_path)
    assert ds.normaliser_config == VARIANTS["counts"](args.bin_ms)
    spec = ds.window_spec
    for name, make in VARIANTS.items():
        norm = make(args.bin_ms)
        at_clip = total = 0
        for s in ds.sessions:
            z = np.asarray(ds.normalised(s.session, norm)[norm.warmup_samples:])
            at_clip += int((np.abs(z) >= norm.clip).sum())
            total += z.size
        out[f"clip_fraction_{name}"] = at_clip / total
        X, y, trials = trial_windows(ds, "psychometric", spec, norm)
        train, _ = trials.split_80_20()
        preds[f"raw_{name}"] = _probe(X.reshape(len(X), -1), y, train, trials, seed)
        preds[f"mean_{name}"] = _probe(X.mean(axis=1), y, train, trials, seed)
    # plain z-score of the same windows: each unit's mean and SD over the whole task session
    sid = str(trials.session[0])
    rate = np.asarray(ds.mua(sid), dtype=np.float64)
    mu, sd = rate.mean(axis=0), rate.std(axis=0)
    zz = (rate - mu) / np.where(sd > 0, sd, 1.0)
    Z = np.stack([zz[a:b] for a, b in (spec.triggered_window(int(o))
                                       for o in trials.onset_sample)]).astype(np.float32)
    preds["raw_zscore"] = _probe(Z.reshape(len(Z), -1), y, train, trials, seed)
    preds["mean_zscore"] = _probe(Z.mean(axis=1), y, train, trials, seed)
    out["y_eval"] = y[~train]
    shutil.rmtree(ds_path)
    out["preds"] = preds
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seeds", type=int, default=3)
    ap.add_argument("--units", type=int, default=32)
    ap.add_argument("--bin-ms", type=float, default=50.0)
    ap.add_argument("--rest-s", type=float, default=120.0)
    ap.add_argument("--task-s", type=float, default=1200.0)
    ap.add_argument("--iti-s", type=float, default=1.2)
    ap.add_argument("--gain", type=float, default=0.4, help="label-1 rate increase of modulated units")
    ap.add_argument("--window-ms", type=float, default=400.0)
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--out", type=Path, default=ROOT / "bench" / "results" / "binned_counts.json")
    args = ap.parse_args()
    if args.quick:
        args.seeds, args.task_s, args.rest_s = 1, 300.0, 30.0
    t0 = time.perf_counter()
    runs = []
    with tempfile.TemporaryDirectory(prefix="bench-counts-") as tmp:
        for seed in range(args.seeds):
            runs.append(run_seed(seed, args, Path(tmp)))
            r = runs[-1]
            print(f"seed {seed}: {r['n_events']} events, values at the clip: "
                  + ", ".join(f"{v} {100 * r[f'clip_fraction_{v}']:.3f}%" for v in VARIANTS),
                  flush=True)
    y = np.concatenate([r["y_eval"] for r in runs])
    names = list(runs[0]["preds"])
    pooled = {n: np.concatenate([r["preds"][n] for r in runs]) for n in names}
    result = {"config": {k: v for k, v in vars(args).items() if k != "out"}, "n_eval": len(y),
              "clip_fraction": {v: float(np.mean([r[f"clip_fraction_{v}"] for r in runs]))
                                for v in VARIANTS},
              "balanced_accuracy": {}, "paired": {}, "per_seed": [],
              "wall_s": None}
    for n in names:
        lo, hi = bootstrap_ci(y, pooled[n])
        result["balanced_accuracy"][n] = {"ba": balanced_accuracy(y, pooled[n]), "ci95": [lo, hi]}
    for a, b in (("raw_counts", "raw_zscore"), ("raw_mua", "raw_zscore"),
                 ("raw_robust_poisson", "raw_zscore"), ("raw_counts", "raw_mua"),
                 ("mean_counts", "mean_zscore"), ("mean_mua", "mean_zscore")):
        result["paired"][f"{a} - {b}"] = paired_comparison(y, pooled[a], pooled[b])
    for r in runs:
        result["per_seed"].append({k: v for k, v in r.items() if k not in ("preds", "y_eval")}
                                  | {"ba": {n: balanced_accuracy(r["y_eval"], p)
                                            for n, p in r["preds"].items()}})
    result["wall_s"] = round(time.perf_counter() - t0, 1)
    print("\nvalues at the clip (+-8) after warm-up: " + ", ".join(
        f"{v} {100 * f:.3f}%" for v, f in result["clip_fraction"].items()))
    print(f"balanced accuracy on {len(y)} evaluation trials ({args.seeds} seeds), 95% CI:")
    for n in names:
        e = result["balanced_accuracy"][n]
        print(f"  {n:<20} {100 * e['ba']:5.1f}% [{100 * e['ci95'][0]:.1f}, {100 * e['ci95'][1]:.1f}]")
    print("paired differences (points, 95% CI):")
    for k, p in result["paired"].items():
        print(f"  {k:<36} {100 * p['diff']:+5.1f} [{100 * p['ci95'][0]:+.1f}, "
              f"{100 * p['ci95'][1]:+.1f}]  p {p['p_value']:.3g}")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2, default=float))
    print(f"wrote {args.out} ({result['wall_s']} s)")


if __name__ == "__main__":
    main()
