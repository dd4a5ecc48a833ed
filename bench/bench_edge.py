"""Edge latency and memory: the issue's "done when" figures for the bedside runtime.

    python bench/bench_edge.py [BUNDLE]              # decision latency + 60 s stream at real time
    python bench/bench_edge.py BUNDLE --minutes 10   # the issue's 10-minute stream
    python bench/bench_edge.py BUNDLE --load 1       # with one busy process running (issue 15)
    python bench/bench_edge.py --quick               # 2,000 runs + 20 s of stream (< 60 s)

BUNDLE defaults to demo-run/bundle (what `make demo` / `phosphene quantize` on the demo
preset writes). Without it, the tests' tiny bundle is built (needs TensorFlow) and the
result says so: its figures are not the demo bundle's.

Measures, with one interpreter thread: decision latency (normalise + quantise the new
patch into the int8 ring, invoke, probe: the runtime's own code path) over steady-state
runs, stage by stage, beside the interpreter alone and the float path it replaced;
end-to-end latency (last byte read -> decision written) of the live runtime reading a
pseudo-terminal fed by the simulator at real time, stage by stage (read_parse, ring,
decision, write); budget misses, frames lost, and resident memory at start and end of the
stream. `--load N` keeps N busy processes running throughout (ended with the benchmark),
`--cpu N` pins the runtime, `--realtime P` runs it at SCHED_FIFO. Writes
bench/results/edge.json.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import bench_bundle_path, machine, save, table

ROOT = Path(__file__).resolve().parent.parent
# issue 15 (decision at the interpreter's floor, a tail that holds under load); rss: issue 6
TARGETS = {"decision_p50_over_invoke_p50": 1.5, "decision_p99_over_invoke_p99": 2.0,
           "e2e_p99_us": 1000.0, "rss_mb": 150.0}




def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("bundle", nargs="?", help="bundle directory (default demo-run/bundle)")
    parser.add_argument("--quick", action="store_true", help="2,000 runs and 20 s of stream")
    parser.add_argument("--minutes", type=float, help="stream minutes (default 1; the issue: 10)")
    parser.add_argument("--runs", type=int, help="decision runs (default 10,000)")
    parser.add_argument("--realtime", type=int, metavar="PRIO",
                        help="the runtime's deciding thread at SCHED_FIFO priority PRIO (a dedicated "
                             "board's setting; needs root or CAP_SYS_NICE)")
    parser.add_argument("--cpu", type=int, metavar="N", help="pin the runtime to CPU N")
    parser.add_argument("--load", type=int, default=0, metavar="N",
                        help="busy processes running while measuring (issue 15: 1)")
    args = parser.parse_args(argv)

    from phosphene.edge.benchmark import BenchConfig, bench_bundle, bench_stream
    from phosphene.edge.bundle import load_bundle

    with tempfile.TemporaryDirectory() as tmp:
        path, kind = bench_bundle_path(args.bundle, Path(tmp))
        runs = args.runs or (2000 if args.quick else 10_000)
        stream_s = 60.0 * args.minutes if args.minutes else (20.0 if args.quick else 60.0)
        print(f"decision latency: {runs} runs, 1 thread ...", file=sys.stderr, flush=True)
        decision = bench_bundle(path, BenchConfig(threads=1, runs=runs, warmup=100, cpu=args.cpu,
                                                  load=args.load, realtime_priority=args.realtime))
        numpy_path = None
        if decision["kernel"] == "c":  # the same path without the compiled kernel, same samples
            print("the numpy int8 path (no compiled kernel), same runs ...", file=sys.stderr, flush=True)
            numpy_path = bench_bundle(path, BenchConfig(threads=1, runs=runs, warmup=100, cpu=args.cpu,
                                                        load=args.load, realtime_priority=args.realtime,
                                                        float_path=False, kernel=False))
        print(f"end to end: {stream_s:.0f} s of stream through a pty at real time ...",
              file=sys.stderr, flush=True)
        stream = bench_stream(load_bundle(path), duration_s=stream_s, threads=1, cpu=args.cpu,
                              load=args.load, realtime_priority=args.realtime)

    d, e, ratios = decision["decision_us"], stream["e2e_us"], decision["ratios"]
    checks = {
        "decision_p50_ratio_ok": ratios["decision_p50_over_invoke_p50"] <= TARGETS["decision_p50_over_invoke_p50"],
        "decision_p99_ratio_ok": ratios["decision_p99_over_invoke_p99"] <= TARGETS["decision_p99_over_invoke_p99"],
        "e2e_p99_ok": e["p99"] <= TARGETS["e2e_p99_us"],
        "zero_misses": stream["budget_misses"] == 0,
        "zero_frames_lost": stream["frames_lost"] == 0,
        "rss_ok": max(stream["rss_mb_end"], decision["rss_mb"]) < TARGETS["rss_mb"],
    }
    q = ("p50", "p90", "p99", "max")
    rows = [{"measure": "invoke (interpreter alone)", **{k: decision["invoke_us"][k] for k in q}},
            {"measure": "decision", **{k: d[k] for k in q}}]
    rows += [{"measure": f"  {name}", **{k: v[k] for k in q}} for name, v in decision["stages_us"].items()]
    fp = decision["float_path"]
    rows += [{"measure": "float path (before the int8 ring)", **{k: fp["decision_us"][k] for k in q}}]
    rows += [{"measure": f"  {name}", **{k: v[k] for k in q}} for name, v in fp["stages_us"].items()]
    if numpy_path is not None:
        rows += [{"measure": "numpy int8 path (no kernel): invoke", **{k: numpy_path["invoke_us"][k] for k in q}},
                 {"measure": "numpy int8 path: decision", **{k: numpy_path["decision_us"][k] for k in q}}]
        rows += [{"measure": f"  {name}", **{k: v[k] for k in q}} for name, v in numpy_path["stages_us"].items()]
    rows += [{"measure": f"end to end, {stream_s:.0f} s pty stream", **{k: e[k] for k in q}}]
    rows += [{"measure": f"  {name}", **{k: v[k] for k in q}} for name, v in stream["e2e_stages_us"].items()]
    print(table(rows, ["measure", *q],
                title=f"edge latency (us), {decision['runtime']} {decision['runtime_version']}, 1 thread, "
                      f"{machine()['cpu']}"))
    print(f"\ndecision / invoke: p50 {ratios['decision_p50_over_invoke_p50']:.2f}x (target "
          f"{TARGETS['decision_p50_over_invoke_p50']}x), p99 {ratios['decision_p99_over_invoke_p99']:.2f}x "
          f"(target {TARGETS['decision_p99_over_invoke_p99']}x; "
          f"{ratios['decision_p99_over_invoke_after_decision_p99']:.2f}x against the interpreter timed only "
          f"right after a decision); float path / int8 p50 "
          f"{fp['decision_p50_over_int8_p50']:.2f}x, p99 {fp['decision_p99_over_int8_p99']:.2f}x; "
          f"{fp['decision_mismatches']} windows decided differently")
    print(f"int8 path: {'compiled kernel (edge/_kernel.c)' if decision['kernel'] == 'c' else 'numpy'}")
    if numpy_path is not None:
        nr = numpy_path["ratios"]
        print(f"numpy int8 path (measured after, same samples): decision / invoke p50 "
              f"{nr['decision_p50_over_invoke_p50']:.2f}x, p99 {nr['decision_p99_over_invoke_p99']:.2f}x; "
              f"its decision p50 / the kernel's {numpy_path['decision_us']['p50'] / d['p50']:.2f}x")
    print(f"load: {args.load} busy process(es); cpu: {args.cpu if args.cpu is not None else 'not pinned'}; "
          f"garbage collections in timed decisions: {decision['gc_during_decisions']}, page faults: "
          f"{decision['page_faults_during_decisions']}")
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
                        "targets": TARGETS, "checks": checks, "bench": decision, "numpy_path": numpy_path,
                        "stream": stream})
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
