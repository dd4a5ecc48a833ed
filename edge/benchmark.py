"""On-device benchmark of a bundle, modelled on TFLite's benchmark_model.

Two headline figures over `runs` steady-state repetitions after `warmup`: `invoke_us`
(set_tensor + invoke + get_tensor on an already quantised input: the interpreter alone)
and `decision_us` (what the runtime does per continuous decision: normalise and quantise
one patch of new samples into the int8 ring, take the window's rows, set_tensor + invoke,
output -> P(perceived)), with `stages_us` splitting the decision into those stages
(p50/p90/p99/max each). The same loop also runs the float path (normalise into a float
ring, gather the window, quantise it, invoke, dequantise + probe: the pipeline before the
int8 ring) on the same samples, as `float_path`, with its own stages and a check that
both make the same decision on every window (and the largest difference in P). The input
is virtual-cortex MUA, so the normaliser and the model see realistic values.

`load=N` keeps N busy-looping processes running while measuring (each ends itself after
a time bound; all are terminated and reaped before the function returns), so the tail
under load is measured. `cpu=N` pins the measuring process to that CPU for the
measurement. `stream=True` adds the end-to-end figure: the live runtime reading a
pseudo-terminal fed by the simulator at real time, with its stages (read_parse, ring,
decision, write).
"""

from __future__ import annotations

import contextlib
import gc
import logging
import os
import resource
import subprocess
import sys
import time
from dataclasses import dataclass

import numpy as np

from phosphene.edge.stats import cpu_model, peak_rss_mb, rss_mb, summarise_us
from phosphene.errors import ConfigError

__all__ = ["BenchConfig", "bench_bundle", "bench_stream", "busy_load", "check_cpu", "format_bench",
           "pinned"]

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class BenchConfig:
    threads: int = 1
    runs: int = 1000  # steady-state repetitions
    warmup: int = 50  # repetitions discarded before measuring
    runtime: str = "auto"  # litert | tflite-runtime | auto
    latency_budget_ms: float | None = None  # None: the bundle's
    seed: int = 0  # virtual-cortex data
    realtime_priority: int | None = None  # SCHED_FIFO while measuring (a dedicated board's setting)
    cpu: int | None = None  # pin the measuring process to this CPU while measuring
    load: int = 0  # busy processes kept running while measuring
    float_path: bool = True  # also measure the float path (the pipeline before the int8 ring)
    kernel: bool = True  # the compiled kernel where built; False: the numpy int8 path

    def __post_init__(self) -> None:
        if self.threads < 1 or self.runs < 1 or self.warmup < 0 or self.load < 0:
            raise ConfigError("threads and runs must be >= 1, warmup and load >= 0")


# --------------------------------------------------------------------------------------
# A busy neighbour, and a pinned CPU
# --------------------------------------------------------------------------------------
_BUSY = ("import os, sys, time\n"
         "end = time.monotonic() + float(sys.argv[1]); parent = os.getppid()\n"
         "while time.monotonic() < end and os.getppid() == parent:\n"
         "    for _ in range(100000):\n"
         "        pass\n")


@contextlib.contextmanager
def busy_load(n: int, max_s: float):
    """N busy-looping processes for the duration of the block; yields their pids.

    Each also ends by itself after `max_s` seconds or when this process goes away, so a
    benchmark that is killed leaves nothing spinning; on leaving the block they are
    terminated (killed if they do not stop) and reaped.
    """
    procs = []
    try:
        for _ in range(n):
            procs.append(subprocess.Popen([sys.executable, "-c", _BUSY, f"{max_s:.3f}"],
                                          stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                                          stderr=subprocess.DEVNULL))
        yield [p.pid for p in procs]
    finally:
        for p in procs:
            if p.poll() is None:
                p.terminate()
        for p in procs:
            try:
                p.wait(timeout=5)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait()


def check_cpu(cpu: int) -> None:
    """Raise ValueError unless `cpu` is one this process may run on."""
    try:
        allowed = os.sched_getaffinity(0)
    except AttributeError:
        raise ConfigError("CPU pinning is not supported on this system") from None
    if cpu not in allowed:
        raise ConfigError(f"CPU {cpu} is not one this process may run on "
                          f"(allowed: {', '.join(map(str, sorted(allowed)))})")


@contextlib.contextmanager
def pinned(cpu: int | None):
    """Run the calling thread (and threads it starts) on `cpu` inside the block; restored after."""
    if cpu is None:
        yield
        return
    check_cpu(cpu)
    before = os.sched_getaffinity(0)
    os.sched_setaffinity(0, {cpu})
    try:
        yield
    finally:
        os.sched_setaffinity(0, before)


def _faults() -> int:
    """Page faults (minor + major) of the calling thread so far."""
    try:
        r = resource.getrusage(resource.RUSAGE_THREAD)
    except (AttributeError, ValueError):
        r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_minflt + r.ru_majflt


# --------------------------------------------------------------------------------------
# The decision, stage by stage
# --------------------------------------------------------------------------------------
def bench_bundle(bundle_path, config: BenchConfig = BenchConfig(), *, progress=None,
                 key=None, pin=None) -> dict:
    """Measure a bundle on this machine; returns the JSON-ready result (stable keys).

    key / pin: as for load_bundle (the signature or digest the site requires)."""
    from phosphene.edge.bundle import load_bundle

    if config.cpu is not None:
        check_cpu(config.cpu)
    rss_start = rss_mb()
    t0 = time.perf_counter()
    bundle = load_bundle(bundle_path, key=key, pin=pin)
    load_ms = (time.perf_counter() - t0) * 1e3
    # bounded: a generous multiple of what the loop should take, however slow the machine
    max_s = 120.0 + 0.05 * (config.runs + config.warmup)
    with busy_load(config.load, max_s) as load_pids, pinned(config.cpu):
        result = _measure(bundle, config, load_ms, progress)
    result["rss_mb_start"] = round(rss_start, 1)
    result["load"] = {"processes": config.load, "pids": load_pids}
    result["pinned_cpu"] = config.cpu
    return result


def _measure(bundle, config: BenchConfig, load_ms: float, progress) -> dict:
    from phosphene.cortex import VirtualCortex
    from phosphene.edge.kernel import kernel_name
    from phosphene.edge.runtime import BundleDecoder, SampleBlock, StreamIngest, collect_in_idle

    t0 = time.perf_counter()
    decoder = BundleDecoder(bundle, threads=config.threads, runtime=config.runtime)
    init_ms = (time.perf_counter() - t0) * 1e3
    enc = decoder.encoder
    model = enc.model
    spec, norm_cfg, C = bundle.window_spec, bundle.normaliser_config, bundle.n_channels
    P, W = spec.patch_samples, spec.window_samples

    # realistic input: virtual-cortex MUA on the bundle's channel map, normaliser warmed up;
    # each pass below reads the same samples from its own stream of the same seed
    capacity = -(-(spec.offset_samples + W + int(spec.sample_rate_hz)) // P) * P
    warm = norm_cfg.warmup_samples + W
    n_steps = config.warmup + config.runs + 1
    chunk = 256  # patches generated per call, so memory stays flat for any `runs`

    def blocks(ingest):
        """Warm `ingest` up, then yield (step, SampleBlock) of one patch each."""
        stream = VirtualCortex(bundle.channel_map, seed=config.seed).stream("resting")
        mua, _ = stream.read(warm)
        ingest.add(SampleBlock(0, 0, mua))
        sample, left, i = warm, n_steps, 0
        while left > 0:
            k = min(chunk, left)
            data, _ = stream.read(k * P)
            for j in range(k):
                yield i, SampleBlock(i, sample, data[j * P:(j + 1) * P])  # what parse hands over
                sample, i = sample + P, i + 1
            left -= k

    realtime = False
    if config.realtime_priority:
        from phosphene.edge.source import set_realtime_priority

        refused = set_realtime_priority(config.realtime_priority)
        realtime = refused is None
        if refused:
            log.warning("real-time priority refused (%s); measuring at normal priority", refused)
    names = ("ring", "gather", "invoke", "probe")
    stage_ns = {k: np.zeros(n_steps, dtype=np.int64) for k in names}
    float_names = ("normalise", "gather", "quantise", "invoke", "dequantise_probe")
    float_ns = {k: np.zeros(n_steps, dtype=np.int64) for k in float_names}
    decision_ns = np.zeros(n_steps, dtype=np.int64)
    float_decision_ns = np.zeros(n_steps, dtype=np.int64)
    invoke_ns = np.zeros(n_steps, dtype=np.int64)
    faults = np.zeros(n_steps, dtype=np.int64)
    p_int8 = np.zeros(n_steps, dtype=np.float64)
    at_refresh = np.zeros(n_steps, dtype=bool)  # the patch starts on or crosses a refresh boundary
    R = norm_cfg.refresh_samples
    qin = np.zeros(model.input_shape, dtype=enc.input_quant.dtype)
    mismatches, max_dp = 0, 0.0
    in_decision = [False]
    collections = [0]

    def on_gc(phase, info):  # a collection that starts inside a timed decision
        if phase == "start" and in_decision[0]:
            collections[0] += 1

    clock = time.perf_counter_ns
    ingest = StreamIngest(C, norm_cfg, capacity, quant=decoder.input_quant, window_samples=W)
    use_kernel = config.kernel and kernel_name() == "c"
    if not use_kernel:  # the numpy int8 path (same bytes), to compare against the kernel
        ingest.normaliser._kernel = None
        enc._dot_int8 = None
    float_ingest = None
    ring = ingest.ring
    add, lost_in, view, decode_int8 = ingest.add, ring.lost_in, ring.view, decoder.decode_int8
    gc.collect()
    gc.callbacks.append(on_gc)
    try:
        # pass 1, the runtime's int8 path: between decisions only its own idle-time work
        for i, block in blocks(ingest):
            sample = block.sample + P
            # the interpreter alone, on the last window already quantised: every other step
            # before the decision (after the idle-time work, as the decision itself comes),
            # every other step right after it (the same model just run on the same input:
            # the warmest it gets), so both figures see the same mix of cache states
            before = i % 2 == 0
            if before:
                t_e = clock()
                model.run_raw(qin)
                invoke_ns[i] = clock() - t_e
            f0 = _faults()
            in_decision[0] = True
            t_a = clock()
            add(block)
            t_b = clock()
            lost_in(sample - W, sample)
            rows = view(sample - W, sample)
            t_c = clock()
            p, inv_ns, probe_ns = decode_int8(rows)
            t_d = clock()
            in_decision[0] = False
            faults[i] = _faults() - f0
            decision_ns[i] = t_d - t_a
            stage_ns["ring"][i], stage_ns["gather"][i] = t_b - t_a, t_c - t_b
            stage_ns["invoke"][i], stage_ns["probe"][i] = inv_ns, probe_ns
            p_int8[i] = p
            at_refresh[i] = block.sample % R == 0 or block.sample // R != (sample - 1) // R
            np.copyto(qin, rows)
            del rows
            if not before:
                t_e = clock()
                model.run_raw(qin)
                invoke_ns[i] = clock() - t_e
            # the runtime's idle-time work between frames (not part of a decision)
            ingest.prepare()
            ingest.normaliser.wait_prepared()
            collect_in_idle()
            if progress is not None and i % 100 == 0:
                progress(i / n_steps / (2 if config.float_path else 1))
        # pass 2, the pipeline before the int8 ring, on the same samples: its own timings,
        # and whether it decides every window as pass 1 did
        if config.float_path:
            float_ingest = StreamIngest(C, norm_cfg, capacity)
            window = np.zeros((W, C), dtype=np.float32)
            for i, block in blocks(float_ingest):
                sample = block.sample + P
                t_0 = clock()
                float_ingest.add(block)
                t_1 = clock()
                float_ingest.ring.window(sample - W, sample, window)
                t_2 = clock()
                enc.input_quant.quantize(enc._check(window).reshape(qin.shape), out=qin,
                                         scratch=enc._scratch)
                t_3 = clock()
                q = model.run_raw(qin)
                t_4 = clock()
                p_float, perceived = enc.probe.decide(enc.output_quant.dequantize(q).reshape(-1))
                t_5 = clock()
                float_decision_ns[i] = t_5 - t_0
                for k, v in zip(float_names, (t_1 - t_0, t_2 - t_1, t_3 - t_2, t_4 - t_3, t_5 - t_4),
                                strict=True):
                    float_ns[k][i] = v
                mismatches += perceived != (p_int8[i] >= enc.probe.threshold)
                max_dp = max(max_dp, abs(p_float - p_int8[i]))
                float_ingest.prepare()
                float_ingest.normaliser.wait_prepared()
                collect_in_idle()
                if progress is not None and i % 100 == 0:
                    progress(0.5 + i / n_steps / 2)
    finally:
        gc.callbacks.remove(on_gc)
        if realtime:
            _normal_priority()
        ingest.close()
        if float_ingest is not None:
            float_ingest.close()
    first_ms = decision_ns[0] / 1e6
    steady = slice(1 + config.warmup, None)
    budget_ms = config.latency_budget_ms if config.latency_budget_ms is not None else bundle.latency_budget_ms
    decision = summarise_us(decision_ns[steady] / 1e3)
    invoke = summarise_us(invoke_ns[steady] / 1e3)
    after = np.arange(n_steps)[steady] % 2 == 1
    invoke_after = summarise_us(invoke_ns[steady][after] / 1e3)  # only right after a decision
    norm = ingest.normaliser
    result = {
        "bundle": str(bundle.path),
        "runtime": decoder.runtime_name,
        "runtime_version": decoder.runtime_version,
        "threads": config.threads,
        "cpu": cpu_model(),
        "load_ms": round(load_ms, 3),
        "init_ms": round(init_ms, 3),
        "first_ms": round(first_ms, 3),
        "warmup": config.warmup,
        "runs": config.runs,
        "invoke_us": _rounded(invoke),
        # the half of invoke_us measured right after a decision (the bench before issue 15's
        # second pass measured only this way), and decision/invoke against it
        "invoke_after_decision_us": _rounded(invoke_after),
        "decision_us": _rounded(decision),
        # decision = ring (normalise + quantise one patch into the int8 ring) + gather (lost
        # samples counted, the window's rows taken as a view) + invoke (set_tensor + invoke)
        # + probe (int8 output -> P(perceived))
        "stages_us": {k: _rounded(summarise_us(v[steady] / 1e3)) for k, v in stage_ns.items()},
        # the decisions whose patch starts on or crosses a statistics refresh (once a second
        # with the paper's normaliser: 1.6% of 16-sample patches), and all the others
        "refresh_decision_us": _split_summary(decision_ns[steady], at_refresh[steady]),
        "other_decision_us": _split_summary(decision_ns[steady], ~at_refresh[steady]),
        "ratios": {"decision_p50_over_invoke_p50": round(decision["p50"] / invoke["p50"], 2),
                   "decision_p99_over_invoke_p99": round(decision["p99"] / invoke["p99"], 2),
                   "decision_p99_over_invoke_after_decision_p99":
                       round(decision["p99"] / invoke_after["p99"], 2)},
        "kernel": "c" if use_kernel else "numpy",  # edge/_kernel.c, or the numpy int8 path
        "gc_during_decisions": collections[0],
        "page_faults_during_decisions": int(faults[steady].sum()),
        "normaliser_refreshes": {"prepared": norm.fast_refreshes, "exact": norm.exact_refreshes,
                                 "inline": norm.slow_refreshes},
        "rss_mb": round(peak_rss_mb(), 1),
        "budget_ms": float(budget_ms),
        "budget_ok": bool(decision["p99"] <= budget_ms * 1e3),
        "realtime": realtime,
        "window": spec.to_dict(),
        "n_channels": C,
    }
    if float_ingest is not None:
        fd = summarise_us(float_decision_ns[steady] / 1e3)
        result["float_path"] = {
            "decision_us": _rounded(fd),
            "stages_us": {k: _rounded(summarise_us(v[steady] / 1e3)) for k, v in float_ns.items()},
            "decision_mismatches": int(mismatches),  # windows decided differently by the two paths
            "max_abs_dp": float(max_dp),  # largest |P difference| (the folded probe skips a float32 rounding)
            "decision_p50_over_int8_p50": round(fd["p50"] / decision["p50"], 2),
            "decision_p99_over_int8_p99": round(fd["p99"] / decision["p99"], 2),
        }
    return result


def _split_summary(ns: np.ndarray, mask: np.ndarray) -> dict | None:
    """Summary (us) of the decisions in `mask`; None when there are none."""
    return _rounded(summarise_us(ns[mask] / 1e3)) if mask.any() else None


def _normal_priority() -> None:
    import os

    with contextlib.suppress(AttributeError, OSError):
        os.sched_setscheduler(0, os.SCHED_OTHER, os.sched_param(0))


def _rounded(d: dict) -> dict:
    return {k: round(float(v), 2) for k, v in d.items()}


def format_bench(r: dict) -> str:
    """A readable table, benchmark_model style."""
    extra = []
    if r.get("realtime"):
        extra.append("SCHED_FIFO")
    if r.get("pinned_cpu") is not None:
        extra.append(f"on CPU {r['pinned_cpu']}")
    if r.get("load", {}).get("processes"):
        extra.append(f"{r['load']['processes']} busy process(es) running")
    lines = [
        f"bundle        {r['bundle']}",
        f"interpreter   {r['runtime']} {r['runtime_version']}, {r['threads']} thread(s); int8 path: "
        + ("compiled kernel" if r.get("kernel") == "c" else "numpy (the compiled kernel is not built)"),
        f"cpu           {r['cpu']}",
        f"window        {r['window']['window_samples']} samples x {r['n_channels']} channels "
        f"at {r['window']['sample_rate_hz']:g} Hz",
        f"bundle load   {r['load_ms']:.1f} ms (hash check)    init {r['init_ms']:.1f} ms    "
        f"first decision {r['first_ms']:.2f} ms",
        f"runs          {r['runs']} after {r['warmup']} warm-up" + (f" ({', '.join(extra)})" if extra else ""),
        "",
        f"{'(us)':<24}{'mean':>9}{'std':>9}{'p50':>9}{'p90':>9}{'p99':>9}{'max':>9}",
    ]
    rows = [("invoke", r["invoke_us"]), ("decision", r["decision_us"])]
    rows += [(f"  {k}", v) for k, v in r.get("stages_us", {}).items()]
    for key, name in (("refresh_decision_us", "  at a refresh"), ("other_decision_us", "  all others")):
        if r.get(key):
            rows.append((name, r[key]))
    if "float_path" in r:
        rows.append(("float path (before)", r["float_path"]["decision_us"]))
        rows += [(f"  {k}", v) for k, v in r["float_path"]["stages_us"].items()]
    if "stream" in r and r["stream"].get("e2e_us"):
        rows.append(("end-to-end (stream)", r["stream"]["e2e_us"]))
        rows += [(f"  {k}", v) for k, v in r["stream"].get("e2e_stages_us", {}).items()]
    for name, s in rows:
        lines.append(f"{name:<24}" + "".join(f"{s.get(k, float('nan')):>9.1f}"
                                             for k in ("mean", "std", "p50", "p90", "p99", "max")))
    ratios = r.get("ratios", {})
    lines += ["", f"decision / invoke   p50 {ratios.get('decision_p50_over_invoke_p50', float('nan')):.2f}x"
              f"   p99 {ratios.get('decision_p99_over_invoke_p99', float('nan')):.2f}x"
              f"   (garbage collections in decisions: {r.get('gc_during_decisions', 0)}, "
              f"page faults: {r.get('page_faults_during_decisions', 0)})"]
    if "float_path" in r:
        f = r["float_path"]
        lines.append(f"float path / int8    p50 {f['decision_p50_over_int8_p50']:.2f}x   p99 "
                     f"{f['decision_p99_over_int8_p99']:.2f}x   (windows decided differently: "
                     f"{f['decision_mismatches']}, largest |dP| {f['max_abs_dp']:.1e})")
    lines += ["", f"peak RSS      {r['rss_mb']:.1f} MB"]
    if "stream" in r:
        s = r["stream"]
        lines.append(f"stream        {s['duration_s']:.0f} s through {s['port']}: {s['decisions']} decisions, "
                     f"{s['budget_misses']} budget misses, {s['frames_lost']} frames lost, "
                     f"{s['crc_errors']} CRC errors; RSS {s['rss_mb_start']:.0f} -> {s['rss_mb_end']:.0f} MB")
    verdict = "holds" if r["budget_ok"] else "DOES NOT HOLD"
    lines.append(f"budget        {r['budget_ms']:g} ms per decision: {verdict}")
    return "\n".join(lines)


# the runtime's stage histograms -> the end-to-end stages the benchmark reports
_E2E_STAGES = {"read_parse": "read_parse", "ring": "normalise", "decision": "decision", "write": "write"}


def bench_stream(bundle, *, duration_s: float = 60.0, threads: int = 1, runtime: str = "auto",
                 latency_budget_ms: float | None = None, mode: str = "continuous",
                 seed: int = 0, status_interval_s: float = 0.0, rss_every_s: float = 10.0,
                 realtime_priority: int | None = None, cpu: int | None = None,
                 load: int = 0) -> dict:
    """End-to-end latency of the live runtime: simulator -> pty -> runtime, at real time.

    Decisions are serialised and written to /dev/null, so the write stage is real.
    Returns e2e_us percentiles (from the return of the read that delivered the last byte
    to the decision written) and e2e_stages_us: read_parse (the read's bytes -> frames),
    ring (normalise + quantise into the int8 ring, plus the window's lost-sample check),
    decision (window rows -> P: invoke and probe), write (the line serialised and written);
    decisions, budget misses, frames lost, CRC errors and RSS at start and end.
    cpu: the runtime's process is pinned there (the simulator process, the stand-in for a
    separate device, is not); load: busy processes running throughout.
    """
    import threading

    from phosphene.edge.runtime import BundleDecoder, DecisionSinks, Runtime, RuntimeConfig
    from phosphene.edge.source import SimulatedArrayProcess, run_live
    from phosphene.firmware_bridge.transport import open_port

    if cpu is not None:
        check_cpu(cpu)
    decoder = BundleDecoder(bundle, threads=threads, runtime=runtime)
    rss_trace: list[tuple[float, float]] = []
    t_start = time.monotonic()

    def sample_rss() -> None:  # RSS over the run, to show it is flat
        elapsed = time.monotonic() - t_start
        if not rss_trace or elapsed - rss_trace[-1][0] >= rss_every_s:
            rss_trace.append((round(elapsed, 1), round(rss_mb(), 1)))

    budget = latency_budget_ms if latency_budget_ms is not None else bundle.latency_budget_ms
    # the simulator runs in its own process, as the array is its own device: in this process
    # its Python work would hold the GIL while the runtime's thread waits to decide
    # with --realtime the simulator runs just below the runtime, as a device that the host's
    # load cannot delay
    sim_priority = max(1, realtime_priority - 2) if realtime_priority else None
    with busy_load(load, duration_s + 120.0) as load_pids, open(os.devnull, "w") as devnull, \
            SimulatedArrayProcess(bundle.channel_map, kind="psychometric", speed=1.0, seed=seed,
                                  frame_samples=bundle.window_spec.patch_samples,
                                  realtime_priority=sim_priority) as array, pinned(cpu):
        runtime_ = Runtime(decoder, spec=bundle.window_spec, normaliser_config=bundle.normaliser_config,
                           n_channels=bundle.n_channels,
                           config=RuntimeConfig(mode=mode, latency_budget_ms=budget,
                                                status_interval_s=status_interval_s),
                           sinks=DecisionSinks(stdout=devnull, json_stdout=True),
                           status_stream=None)
        first = [open_port(array.device_path, timeout_s=0.1)]
        array.start()
        t_start = time.monotonic()
        result = run_live(runtime_, lambda: first.pop() if first else open_port(array.device_path),
                          stop=threading.Event(), duration_s=duration_s, on_tick=sample_rss,
                          realtime_priority=realtime_priority)
        sample_rss()
        runtime_.close()
    s = result.summary
    e2e = {k: s["latency_us"][k] for k in ("mean", "std", "p50", "p90", "p99", "max")}
    return {
        "mode": mode,
        "port": "pty (simulator process at real time)",
        "duration_s": s["duration_s"],
        "decisions": s["decisions"],
        "no_decisions": s["no_decisions"],
        "e2e_us": e2e,
        "e2e_stages_us": {name: s["stages_us"][key] for name, key in _E2E_STAGES.items()
                          if key in s["stages_us"]},
        "stages_us": s["stages_us"],
        "budget_ms": budget,
        "budget_misses": s["budget_misses"],
        "frames_lost": s.get("frames_lost", 0),
        "crc_errors": s.get("crc_errors", 0),
        "samples_lost": s["samples_lost"],
        "input_rate_hz": s["input_rate_hz"],
        "normaliser_refreshes": s["normaliser_refreshes"],
        "rss_mb_start": s["rss_mb_start"],
        "rss_mb_end": s["rss_mb_end"],
        "rss_trace_mb": rss_trace,
        "realtime": s["realtime"],
        "pinned_cpu": cpu,
        "load": {"processes": load, "pids": load_pids},
        "budget_ok": bool(s["budget_misses"] == 0 and e2e["p99"] <= budget * 1e3),
    }
