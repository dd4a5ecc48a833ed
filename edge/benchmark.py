"""On-device benchmark of a bundle, modelled on TFLite's benchmark_model.

Two figures: `invoke_us` (set_tensor + invoke + get_tensor on an already quantised input:
the interpreter alone) and `decision_us` (what the runtime does per continuous decision:
normalise one patch of new samples into the ring, gather the window, quantise, invoke,
dequantise, probe), both over `runs` steady-state repetitions after `warmup`. The input is
virtual-cortex MUA, so the normaliser and the model see realistic values. `stream=True`
adds the end-to-end figure: the live runtime reading a pseudo-terminal fed by the
simulator at real time.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass

import numpy as np
from phosphene.edge.stats import cpu_model, peak_rss_mb, rss_mb, summarise_us

__all__ = ["BenchConfig", "bench_bundle", "bench_stream", "format_bench"]

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

    def __post_init__(self) -> None:
        if self.threads < 1 or self.runs < 1 or self.warmup < 0:
            raise ValueError("threads and runs must be >= 1 and warmup >= 0")


def bench_bundle(bundle_path, config: BenchConfig = BenchConfig(), *, progress=None,
                 key=None, pin=None) -> dict:
    """Measure a bundle on this machine; returns the JSON-ready result (stable keys).

    key / pin: as for load_bundle (the signature or digest the site requires)."""
    from phosphene.edge.bundle import load_bundle
    from phosphene.edge.runtime import BundleDecoder, SampleBlock, StreamIngest

    from phosphene.cortex import VirtualCortex

    rss_start = rss_mb()
    t0 = time.perf_counter()
    bundle = load_bundle(bundle_path, key=key, pin=pin)
    load_ms = (time.perf_counter() - t0) * 1e3
    t0 = time.perf_counter()
    decoder = BundleDecoder(bundle, threads=config.threads, runtime=config.runtime)
    init_ms = (time.perf_counter() - t0) * 1e3
    model = decoder.encoder.model
    spec, norm_cfg, C = bundle.window_spec, bundle.normaliser_config, bundle.n_channels
    P, W = spec.patch_samples, spec.window_samples

    # realistic input: virtual-cortex MUA on the bundle's channel map, normaliser warmed up
    cortex = VirtualCortex(bundle.channel_map, seed=config.seed)
    stream = cortex.stream("resting")
    capacity = spec.offset_samples + W + int(spec.sample_rate_hz)
    ingest = StreamIngest(C, norm_cfg, capacity)
    warm = norm_cfg.warmup_samples + W
    mua, _ = stream.read(warm)
    ingest.add(SampleBlock(0, 0, mua))
    sample = warm
    n_steps = config.warmup + config.runs + 1
    chunk = 256  # patches generated per call, so memory stays flat for any `runs`
    window = np.zeros((W, C), dtype=np.float32)

    def patches():
        nonlocal sample
        left = n_steps
        while left > 0:
            k = min(chunk, left)
            block, _ = stream.read(k * P)
            for i in range(k):
                yield block[i * P:(i + 1) * P]
            left -= k

    realtime = False
    if config.realtime_priority:
        from phosphene.edge.source import set_realtime_priority

        refused = set_realtime_priority(config.realtime_priority)
        realtime = refused is None
        if refused:
            log.warning("real-time priority refused (%s); measuring at normal priority", refused)
    decision_ns = np.zeros(n_steps, dtype=np.int64)
    invoke_ns = np.zeros(n_steps, dtype=np.int64)
    qin = np.zeros(model.input_shape, dtype=decoder.encoder._in_q.dtype)
    clock = time.perf_counter_ns
    for i, patch in enumerate(patches()):
        t_a = clock()
        ingest.add(SampleBlock(i, sample, patch))
        sample += P
        ingest.ring.window(sample - W, sample, window)
        decoder.decode(window)
        t_b = clock()
        decision_ns[i] = t_b - t_a
        # the runtime's idle-time work between frames (not part of a decision)
        ingest.prepare()
        ingest.normaliser.wait_prepared()
        # the interpreter alone, on the same window already quantised
        decoder.encoder._in_q.quantize(window.reshape(qin.shape), out=qin)
        t_c = clock()
        model.run_raw(qin)
        invoke_ns[i] = clock() - t_c
        if progress is not None and i % 100 == 0:
            progress(i / n_steps)
    if realtime:
        _normal_priority()
    ingest.close()
    first_ms = decision_ns[0] / 1e6
    steady = slice(1 + config.warmup, None)
    budget_ms = config.latency_budget_ms if config.latency_budget_ms is not None else bundle.latency_budget_ms
    decision = summarise_us(decision_ns[steady] / 1e3)
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
        "invoke_us": _rounded(summarise_us(invoke_ns[steady] / 1e3)),
        "decision_us": _rounded(decision),
        "rss_mb": round(peak_rss_mb(), 1),
        "rss_mb_start": round(rss_start, 1),
        "budget_ms": float(budget_ms),
        "budget_ok": bool(decision["p99"] <= budget_ms * 1e3),
        "realtime": realtime,
        "window": spec.to_dict(),
        "n_channels": C,
    }
    return result


def _normal_priority() -> None:
    import os

    try:
        os.sched_setscheduler(0, os.SCHED_OTHER, os.sched_param(0))
    except (AttributeError, OSError):
        pass


def _rounded(d: dict) -> dict:
    return {k: round(float(v), 2) for k, v in d.items()}


def format_bench(r: dict) -> str:
    """A readable table, benchmark_model style."""
    lines = [
        f"bundle        {r['bundle']}",
        f"interpreter   {r['runtime']} {r['runtime_version']}, {r['threads']} thread(s)",
        f"cpu           {r['cpu']}",
        f"window        {r['window']['window_samples']} samples x {r['n_channels']} channels "
        f"at {r['window']['sample_rate_hz']:g} Hz",
        f"bundle load   {r['load_ms']:.1f} ms (hash check)    init {r['init_ms']:.1f} ms    "
        f"first decision {r['first_ms']:.2f} ms",
        f"runs          {r['runs']} after {r['warmup']} warm-up"
        + (" (SCHED_FIFO)" if r.get("realtime") else ""),
        "",
        f"{'(us)':<22}{'mean':>9}{'std':>9}{'p50':>9}{'p90':>9}{'p99':>9}{'max':>9}",
    ]
    rows = [("invoke", r["invoke_us"]), ("decision", r["decision_us"])]
    if "stream" in r and r["stream"].get("e2e_us"):
        rows.append(("end-to-end (stream)", r["stream"]["e2e_us"]))
    for name, s in rows:
        lines.append(f"{name:<22}" + "".join(f"{s[k]:>9.1f}" for k in ("mean", "std", "p50", "p90", "p99", "max")))
    lines += ["", f"peak RSS      {r['rss_mb']:.1f} MB"]
    if "stream" in r:
        s = r["stream"]
        lines.append(f"stream        {s['duration_s']:.0f} s through {s['port']}: {s['decisions']} decisions, "
                     f"{s['budget_misses']} budget misses, {s['frames_lost']} frames lost, "
                     f"{s['crc_errors']} CRC errors; RSS {s['rss_mb_start']:.0f} -> {s['rss_mb_end']:.0f} MB")
    verdict = "holds" if r["budget_ok"] else "DOES NOT HOLD"
    lines.append(f"budget        {r['budget_ms']:g} ms per decision: {verdict}")
    return "\n".join(lines)


def bench_stream(bundle, *, duration_s: float = 60.0, threads: int = 1, runtime: str = "auto",
                 latency_budget_ms: float | None = None, mode: str = "continuous",
                 seed: int = 0, status_interval_s: float = 0.0, rss_every_s: float = 10.0,
                 realtime_priority: int | None = None) -> dict:
    """End-to-end latency of the live runtime: simulator -> pty -> runtime, at real time.

    Decisions are serialised and written to /dev/null, so the write stage is real.
    Returns e2e_us percentiles (from the read of the last byte to the decision written),
    decisions, budget misses, frames lost, CRC errors and RSS at start and end.
    """
    import os
    import threading
    import time

    from phosphene.edge.runtime import BundleDecoder, DecisionSinks, Runtime, RuntimeConfig
    from phosphene.edge.source import SimulatedArrayProcess, run_live
    from phosphene.edge.stats import rss_mb
    from phosphene.firmware_bridge.transport import open_port

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
    with open(os.devnull, "w") as devnull, SimulatedArrayProcess(
            bundle.channel_map, kind="psychometric", speed=1.0, seed=seed,
            frame_samples=bundle.window_spec.patch_samples, realtime_priority=sim_priority) as array:
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
        "stages_us": s["stages_us"],
        "budget_ms": budget,
        "budget_misses": s["budget_misses"],
        "frames_lost": s.get("frames_lost", 0),
        "crc_errors": s.get("crc_errors", 0),
        "samples_lost": s["samples_lost"],
        "input_rate_hz": s["input_rate_hz"],
        "rss_mb_start": s["rss_mb_start"],
        "rss_mb_end": s["rss_mb_end"],
        "rss_trace_mb": rss_trace,
        "realtime": s["realtime"],
        "budget_ok": bool(s["budget_misses"] == 0 and e2e["p99"] <= budget * 1e3),
    }
