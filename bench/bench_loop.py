"""The closed loop on the virtual cortex: open loop vs gated vs oracle, and the plot.

    python bench/bench_loop.py                         # demo-run/bundle, 150 trials per policy
    python bench/bench_loop.py --quick                 # 20 trials per policy
    python bench/bench_loop.py --bundle B --task threshold_pre --count 150 --speed 5
    python bench/bench_loop.py --from loop.json        # only re-plot a saved result

Runs `phosphene bench-loop`'s benchmark (edge/loop_bench.py) at --speed (perception results
do not depend on the pace), then the latency at real time (gated and open loop, --latency-count
commands), prints the tables, writes bench/results/loop.json and the figure
docs/img/closed-loop.png: P(perceived) over a minute of the gated run, the decoder's and the
cortex's true P(perceived | state), with the commands marked.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np
from _common import save

ROOT = Path(__file__).resolve().parents[1]
FIGURE = ROOT / "docs" / "img" / "closed-loop.png"


def plot(result: dict, path: Path, *, minutes: float = 1.0) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    runs = result["runs"]
    fs = runs["gated"]["sample_rate_hz"]
    fig, axes = plt.subplots(2, 1, figsize=(11, 6), sharex=True, height_ratios=[3, 1])
    ax = axes[0]
    gated = runs["gated"]
    t0 = gated["plan"]["warmup_s"] + gated["decisions"]["sample"][0] / fs
    window = (t0, t0 + 60 * minutes)

    def inside(samples):
        t = np.asarray(samples, float) / fs
        return t, (t >= window[0]) & (t < window[1])

    t, m = inside(gated["decisions"]["sample"])
    p = np.asarray(gated["decisions"]["p"])
    # the decoder's P, smoothed over 4 patches for legibility (the gate saw the raw values)
    smooth = np.convolve(p, np.ones(4) / 4, mode="same")
    ax.plot(t[m] - t0, smooth[m], color="tab:blue", lw=1, label="decoder P(perceived | window)")
    ts, ms = inside(gated["truth_state"]["sample"])
    ax.plot(ts[ms] - t0, np.asarray(gated["truth_state"]["p_state_next"])[ms], color="k", lw=1.2,
            label="true P(perceived | state g) at I50")
    thresholds = [(c["sample"] / fs, c["threshold"]) for c in gated["commands"] if c["threshold"] is not None]
    for run, color, marker, label in ((gated, "tab:red", "v", "gated command"),
                                      (runs.get("open-loop"), "tab:gray", "|", "open-loop command"),
                                      (runs.get("oracle"), "tab:green", "^", "oracle command")):
        if run is None:
            continue
        ct = np.array([c["sample"] / fs for c in run["commands"]])
        keep = (ct >= window[0]) & (ct < window[1])
        perceived = {tr["command_id"]: tr["perceived"] for tr in run["trials"]}
        ids = [c["command_id"] for c in run["commands"]]
        y = 1.04 if run is gated else (1.10 if run is runs.get("oracle") else 0.98)
        for x, cid in zip(ct[keep], np.asarray(ids)[keep]):
            ax.plot(x - t0, y, marker=marker, color=color, ms=8,
                    mfc=color if perceived.get(cid) else "white")
        ax.plot([], [], marker=marker, ls="", color=color, label=f"{label} (filled: perceived)")
    if thresholds:
        tt, th = np.array(thresholds).T
        keep = (tt >= window[0]) & (tt < window[1])
        ax.step(tt[keep] - t0, th[keep], where="post", color="tab:blue", ls=":", lw=1,
                label="gate threshold (running 80% quantile)")
    ax.set_ylabel("P(perceived)")
    ax.set_ylim(0, 1.15)
    ax.legend(loc="lower left", fontsize=7, ncol=2)
    ax.set_title("Closed loop on the virtual cortex (threshold current I50); same cortex, same seed")
    ax2 = axes[1]
    ax2.plot(ts[ms] - t0, np.asarray(gated["truth_state"]["state"])[ms], color="k", lw=1)
    ax2.axhline(0, color="0.7", lw=0.8)
    ax2.set_ylabel("state g")
    ax2.set_xlabel("stream time (s) after the warm-up")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp.png")
    fig.savefig(tmp, dpi=110)
    plt.close(fig)
    tmp.replace(path)
    return path


def main(argv: list[str]) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--bundle", default=str(ROOT / "demo-run" / "bundle"))
    ap.add_argument("--task", default="threshold_pre")
    ap.add_argument("--count", type=int, default=150)
    ap.add_argument("--latency-count", type=int, default=30)
    ap.add_argument("--speed", type=float, default=5.0)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--from", dest="from_json", help="re-plot a saved result (bench-loop --out)")
    args = ap.parse_args(argv)
    if args.from_json:
        result = json.loads(Path(args.from_json).read_text())
        print(f"figure: {plot(result, FIGURE)}")
        return 0
    from phosphene.edge.bundle import load_bundle
    from phosphene.edge.loop_bench import LoopConfig, format_table, run_benchmark

    if not Path(args.bundle).exists():
        print(f"no bundle at {args.bundle}: run `make demo` first (or give --bundle)", file=sys.stderr)
        return 1
    bundle = load_bundle(args.bundle)
    count = 20 if args.quick else args.count
    task = args.task if args.task in bundle.probes else None

    def progress(message: str) -> None:
        print(f"[bench_loop] {message}", file=sys.stderr, flush=True)

    result = run_benchmark(bundle, LoopConfig(count=count, speed=args.speed, seed=args.seed, task=task),
                           ("open-loop", "gated", "oracle"), progress=progress)
    print(format_table(result["rows"], result["gains"]))
    latency = run_benchmark(bundle, LoopConfig(count=10 if args.quick else args.latency_count, speed=1.0,
                                               seed=args.seed, task=task),
                            ("gated", "open-loop"), progress=progress)
    print("\nat real time (speed 1): command latency")
    print(format_table(latency["rows"], {}))
    figure = plot(result, FIGURE)
    brief = {"rows": result["rows"], "gains": result["gains"], "latency_rows": latency["rows"],
             "i50_ua": result["i50_ua"], "pre_stimulus_ceiling": result["pre_stimulus_ceiling"],
             "config": result["config"], "figure": str(figure.relative_to(ROOT))}
    print(f"results: {save('loop', brief)}; figure: {figure}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
