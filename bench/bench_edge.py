"""Edge latency and memory: the issue's "done when" figures for the bedside runtime.

    python bench/bench_edge.py [BUNDLE]              # decision latency + 60 s stream at real time
    python bench/bench_edge.py BUNDLE --minutes 10   # the issue's 10-minute stream
    python bench/bench_edge.py --quick               # 2,000 runs + 20 s of stream (< 60 s)

BUNDLE defaults to demo-run/bundle (what `make demo` / `phosphene quantize` on the demo
preset writes). Without it, the tests' tiny bundle is built (needs TensorFlow) and the
result says so: its figures are not the demo bundle's.

Measures, with one interpreter thread: decision latency (normalise + invoke + probe, the
runtime's own code path) over steady-state runs; end-to-end latency (last byte read ->
decision written) of the live runtime reading a pseudo-terminal fed by the simulator at
real time; budget misses, frames lost, and resident memory at start and end of the stream.
Writes bench/results/edge.json.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import machine, save, table

ROOT = Path(__file__).resolve().parent.parent
TARGETS = {"decision_p99_us": 1000.0, "e2e_p99_us": 3000.0, "rss_mb": 150.0}  # issue 6


def _bundle(path: str | None, tmp: Path) -> tuple[Path, str]:
    if path:
        return Path(path), "given"
    demo = ROOT / "demo-run" / "bundle"
    if demo.is_dir():
        return demo, "demo (demo-run/bundle)"
    print("no demo bundle at demo-run/bundle: building the tests' tiny bundle instead "
          "(its figures are NOT the demo bundle's)", file=sys.stderr)
    sys.path.insert(0, str(ROOT / "tests" / "edge"))
    from tiny_bundle import make_tiny_bundle

    return make_tiny_bundle(tmp / "tiny-bundle"), "tiny test bundle (no demo bundle found)"


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("bundle", nargs="?", help="bundle directory (default demo-run/bundle)")
    parser.add_argument("--quick", action="store_true", help="2,000 runs and 20 s of stream")
    parser.add_argument("--minutes", type=float, help="stream minutes (default 1; the issue: 10)")
    parser.add_argument("--runs", type=int, help="decision runs (default 10,000)")
    parser.add_argument("--realtime", type=int, metavar="PRIO",
                        help="the runtime's deciding thread at SCHED_FIFO priority PRIO (a dedicated "
                             "board's setting; needs root or CAP_SYS_NICE)")
    args = parser.parse_args(argv)

    from phosphene.edge.benchmark import BenchConfig, bench_bundle, bench_stream
    from phosphene.edge.bundle import load_bundle

    with tempfile.TemporaryDirectory() as tmp:
        path, kind = _bundle(args.bundle, Path(tmp))
        runs = args.runs or (2000 if args.quick else 10_000)
        stream_s = 60.0 * args.minutes if args.minutes else (20.0 if args.quick else 60.0)
        print(f"decision latency: {runs} runs, 1 thread ...", file=sys.stderr, flush=True)
        decision = bench_bundle(path, BenchConfig(threads=1, runs=runs, warmup=100,
                                                  realtime_priority=args.realtime))
        print(f"end to end: {stream_s:.0f} s of stream through a pty at real time ...",
              file=sys.stderr, flush=True)
        stream = bench_stream(load_bundle(path), duration_s=stream_s, threads=1,
                              realtime_priority=args.realtime)

    d, e = decision["decision_us"], stream["e2e_us"]
    checks = {
        "decision_p99_ok": d["p99"] <= TARGETS["decision_p99_us"],
        "e2e_p99_ok": e["p99"] <= TARGETS["e2e_p99_us"],
        "zero_misses": stream["budget_misses"] == 0,
        "zero_frames_lost": stream["frames_lost"] == 0,
        "rss_ok": max(stream["rss_mb_end"], decision["rss_mb"]) < TARGETS["rss_mb"],
    }
    rows = [
        {"measure": "invoke (interpreter alone)", **{k: decision["invoke_us"][k] for k in ("p50", "p99", "max")},
         "target p99": ""},
        {"measure": "decision (normalise+invoke+probe)", **{k: d[k] for k in ("p50", "p99", "max")},
         "target p99": TARGETS["decision_p99_us"]},
        {"measure": f"end to end, {stream_s:.0f} s pty stream", **{k: e[k] for k in ("p50", "p99", "max")},
         "target p99": TARGETS["e2e_p99_us"]},
    ]
    print(table(rows, ["measure", "p50", "p99", "max", "target p99"],
                title=f"edge latency (us), {decision['runtime']} {decision['runtime_version']}, 1 thread, "
                      f"{machine()['cpu']}"))
    print(f"\npriority: {'SCHED_FIFO ' + str(args.realtime) if stream['realtime'] else 'normal'} "
          "(SCHED_FIFO: the runtime's deciding thread only, as on a dedicated board)")
    print(f"bundle: {path} ({kind}); window {decision['window']['window_samples']} x "
          f"{decision['n_channels']}; budget {stream['budget_ms']:g} ms")
    print(f"stream: {stream['decisions']} decisions, {stream['budget_misses']} budget misses, "
          f"{stream['frames_lost']} frames lost, {stream['crc_errors']} CRC errors")
    print(f"RSS: bench peak {decision['rss_mb']:.0f} MB; stream {stream['rss_mb_start']:.0f} MB at start, "
          f"{stream['rss_mb_end']:.0f} MB at end; trace {stream['rss_trace_mb']}")
    print("checks: " + ", ".join(f"{k} {'yes' if v else 'NO'}" for k, v in checks.items()))
    out = save("edge", {"bundle": str(path), "bundle_kind": kind, "quick": args.quick,
                        "targets": TARGETS, "checks": checks, "bench": decision, "stream": stream})
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
