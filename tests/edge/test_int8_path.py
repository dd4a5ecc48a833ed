"""The decision at the interpreter's floor: samples normalised and quantised once, on arrival,
into an int8 ring; a decision is a view of its rows, the interpreter and the probe.

Everything here is checked against the one signal definition: the core Normaliser, then
QuantParams.quantize with the model's own input parameters, then Probe on the dequantised
latent. Bit for bit, over streams with refresh boundaries, gaps, resets and NaN blocks.
"""

from __future__ import annotations

import concurrent.futures
import gc
import io
import json
import os
import sys
import tracemalloc

import numpy as np
import pytest

from phosphene.edge.bundle import QuantParams
from phosphene.edge.kernel import KERNEL, kernel_name
from phosphene.edge.normaliser import EdgeNormaliser
from phosphene.edge.runtime import (
    DecisionSinks,
    Int8Ring,
    Runtime,
    RuntimeConfig,
    SampleBlock,
    StreamIngest,
    collect_in_idle,
)
from phosphene.edge.source import FrameAdapter
from phosphene.signal import Normaliser, NormaliserConfig


class _Executor:
    """The normaliser's helper, deterministic: a submission finishes at once or never."""

    def __init__(self, finish):
        self.finish, self.n = finish, 0

    def submit(self, fn, *args):
        future = concurrent.futures.Future()
        self.n += 1
        if self.finish(self.n):
            future.set_result(fn(*args))
        return future

    def shutdown(self, **kwargs):
        pass


def _signal(rng, T, C, *, quantised=False):
    x = rng.lognormal(1.5, 0.6, (T, C)).astype(np.float32)
    x[:, 0] = 0.2  # dead: MAD 0 -> the floor
    x[:, 2] = np.rint(rng.normal(10, 1, T)) * np.float32(0.02)  # few values, long runs of ties
    x[:, 3] = rng.lognormal(1.5, 2.0, T)  # spans decades
    if quantised:  # int16 wire values * scale: many ties
        x = (np.rint(x / 0.5) * np.float32(0.5)).astype(np.float32)
    return x


QUANT = QuantParams(scale=0.0508, zero_point=-31, dtype="int8", shape=(1, 128, 8))
IMPLS = ["c", "numpy"]  # edge/_kernel.c, and the numpy path used where it is not built


def use_impl(normaliser: EdgeNormaliser, impl: str) -> None:
    """Run `normaliser` on the compiled kernel ("c", which this environment builds) or numpy."""
    if impl == "c":
        assert KERNEL is not None, "edge/_kernel.c is not built (pip install -e . builds it)"
    normaliser._kernel = KERNEL if impl == "c" else None


# the helper finishes every preparation / those of every other boundary (odd, even: the
# others refresh inline) / none (the core refresh, inline)
FINISH = {"all": lambda n: True, "first": lambda n: n % 2 == 1, "last": lambda n: n % 2 == 0,
          "none": lambda n: False}


@pytest.mark.parametrize("impl", IMPLS)
@pytest.mark.parametrize("finish", FINISH)
@pytest.mark.parametrize("frame", [5, 16, 33])
def test_normaliser_paths_and_int8_output_equal_the_core(finish, frame, impl):
    """Every way a refresh can happen (assigned, merged, merged from an earlier preparation,
    inline) gives the core's bytes, and process_int8 gives quantize(process(x)), with the
    compiled kernel and with the numpy path."""
    cfg = NormaliserConfig(window_s=0.8, refresh_s=0.2)
    C, T = 8, 4000
    for seed, quantised in ((frame, False), (frame + 1, True)):
        x = _signal(np.random.default_rng(seed), T, C, quantised=quantised)
        x[1700:1703, 4] = np.inf  # +-inf: clipped as the core clips it
        x[2500, 5] = -np.inf
        expected = Normaliser(C, cfg).process(x)
        want8 = QUANT.quantize(np.nan_to_num(expected, nan=0.0))
        float_edge, int8_edge = EdgeNormaliser(C, cfg), EdgeNormaliser(C, cfg)
        float_edge._pool, int8_edge._pool = _Executor(FINISH[finish]), _Executor(FINISH[finish])
        int8_edge.set_output_quant(QUANT)
        use_impl(int8_edge, impl)
        got, got8 = [], np.zeros((T, C), np.int8)
        for i in range(0, T, frame):
            got.append(float_edge.process(x[i:i + frame]))
            int8_edge.process_int8(x[i:i + frame], got8[i:i + frame])
            float_edge.prepare()
            int8_edge.prepare()
        assert np.array_equal(np.concatenate(got), expected, equal_nan=True)
        warm = cfg.warmup_samples
        assert np.array_equal(got8[warm:], want8[warm:])
        refreshes = (T - 1) // cfg.refresh_samples
        assert int8_edge.fast_refreshes + int8_edge.slow_refreshes == refreshes
        if finish == "none":
            assert int8_edge.fast_refreshes == 0
        elif finish == "all":  # inline only with +-inf in the window (the core's arithmetic then)
            assert set(int8_edge.inline_reasons) <= {"non-finite samples in the window"}
            assert int8_edge.fast_refreshes >= 9
            # boundaries a frame ends on: finished in idle time, an assignment at the boundary;
            # with the kernel also those where the block that crosses the boundary brings no
            # decimated sample before it (prepared again after the block before it)
            aligned = any(b % frame == 0 for b in range(cfg.refresh_samples, T, cfg.refresh_samples))
            if impl == "numpy":
                assert (int8_edge.exact_refreshes >= 1) == aligned
            else:
                assert int8_edge.exact_refreshes >= aligned


def test_paper_config_refreshes_are_prepared_and_exact_at_frame_ends():
    """96 channels, the paper's normaliser, 16-sample frames: every refresh is prepared;
    those whose boundary ends a frame (every other second) are plain assignments."""
    C = 96
    x = _signal(np.random.default_rng(7), 25_000, C)
    cfg = NormaliserConfig()
    expected = Normaliser(C, cfg).process(x)
    edge = EdgeNormaliser(C, cfg)
    edge._pool = _Executor(FINISH["all"])
    got = np.concatenate([(edge.process(x[i:i + 16]), edge.prepare())[0] for i in range(0, len(x), 16)])
    assert np.array_equal(got, expected, equal_nan=True)
    assert edge.fast_refreshes == 24 and edge.slow_refreshes == 0 and edge.exact_refreshes == 12


def _blocks(x, frame, *, gaps=(), resets=(), nan_frames=()):
    """(SampleBlock, offline sample index) per frame; gaps drop frames, resets restart the counter."""
    out, counter = [], 0
    for k, i in enumerate(range(0, len(x), frame)):
        if k in resets:
            counter = 0
        data = x[i:i + frame].copy()
        if k in nan_frames:
            data[3, 1] = np.nan
        if k not in gaps:
            out.append(SampleBlock(k, counter, data))
        counter += len(data)
    return out


@pytest.mark.parametrize("impl", IMPLS)
@pytest.mark.parametrize("frame", [16, 7])
def test_int8_ring_equals_quantised_float_ring_through_gaps_resets_and_nan(frame, impl):
    """A long stream through two StreamIngests, float ring and int8 ring: after every block,
    the int8 view of the newest window equals quantize() of the float window, the lost
    counts and the wire sequence numbers agree; a NaN block is stored as lost."""
    cfg = NormaliserConfig(window_s=2.048, refresh_s=0.256)
    C, W, T = 8, 128, 9000
    x = _signal(np.random.default_rng(frame), T, C)
    blocks = _blocks(x, frame, gaps={100, 101, 260, 300}, resets={400}, nan_frames={200})
    capacity = -(-(170 + W + 1000) // frame) * frame
    f_ingest = StreamIngest(C, cfg, capacity)
    q_ingest = StreamIngest(C, cfg, capacity, quant=QUANT, window_samples=W)
    f_ingest.normaliser._pool = _Executor(FINISH["first"])  # every other refresh inline
    q_ingest.normaliser._pool = _Executor(FINISH["all"])
    use_impl(q_ingest.normaliser, impl)
    window = np.zeros((W, C), np.float32)
    checked = lost_windows = 0
    nan_seq = 200
    for block in blocks:
        status = q_ingest.add(block)
        q_ingest.prepare()
        if block.seq == nan_seq:  # stored as lost, filled: what the float ring makes of a gap
            assert status == "gap"
            continue
        f_status = f_ingest.add(block)
        f_ingest.prepare()
        assert status == f_status or block.seq == nan_seq + 1
        ring, fring = q_ingest.ring, f_ingest.ring
        assert ring.head == fring.head and ring.oldest == fring.oldest
        stop = ring.head
        for start in (stop - W, stop - W - 170):
            if start < q_ingest.warm_from or not ring.holds(start, stop):
                continue
            invalid = fring.window(start, start + W, window)
            assert ring.lost_in(start, start + W) == invalid
            lost_windows += invalid > 0
            view = ring.view(start, start + W)
            assert view.shape == (1, W, C) and view.flags.c_contiguous
            assert np.array_equal(view[0], QUANT.quantize(window))
            if fring.seq_at(start + W - 1) != -1:
                assert ring.seq_at(start + W - 1) == fring.seq_at(start + W - 1)
            checked += 1
    assert checked > 400 and lost_windows > 10
    assert q_ingest.nonfinite_blocks == 1 and q_ingest.resets == f_ingest.resets == 1
    assert q_ingest.samples_lost == f_ingest.samples_lost
    assert q_ingest.normaliser.fast_refreshes > 20
    # with the kernel, blocks that cross or start on a boundary took its short path
    assert (q_ingest.normaliser.crossing_blocks > 10) == (impl == "c")


def test_int8_ring_views_wrap_and_mirror():
    ring = Int8Ring(n_channels=2, capacity=10, window=4)
    ring.clear(100)
    for k in range(8):  # blocks of 3 wrap the 10-row ring at every alignment
        rows = np.full((3, 2), k, np.int8) + np.arange(3, dtype=np.int8)[:, None] * 10
        ring.commit(100 + 3 * k, 3, k != 4, seq=k, rows=rows)
        head = ring.head
        for n in range(1, 5):
            if ring.holds(head - n, head):
                v = ring.view(head - n, head)[0, :, 0]
                want = [(s - 100) // 3 + ((s - 100) % 3) * 10 for s in range(head - n, head)]
                assert v.tolist() == want
    assert ring.head == 124 and ring.oldest == 114
    assert ring.lost_in(114, 118) == 1 and ring.lost_in(115, 124) == 0  # block 4: [112, 115)
    assert ring.seq_at(123) == 7 and ring.seq_at(116) == 5


# --------------------------------------------------------------------------------------
# The runtime on a real bundle
# --------------------------------------------------------------------------------------
class _FloatOnly:
    """The bundle decoder without its int8 entry: the runtime falls back to the float ring."""

    def __init__(self, decoder):
        self.threshold, self.decode = decoder.threshold, decoder.decode


def _runtime(bundle, decoder, clock, mode="continuous"):
    out = io.StringIO()
    runtime = Runtime(decoder, spec=bundle.window_spec, normaliser_config=bundle.normaliser_config,
                      n_channels=bundle.n_channels, config=RuntimeConfig(mode=mode),
                      sinks=DecisionSinks(stdout=out, json_stdout=True), status_stream=None,
                      clock_ns=clock)
    return runtime, FrameAdapter(runtime, clock_ns=clock), out


def test_int8_runtime_decides_as_the_float_runtime(edge_bundle, edge_decoder, psychometric_bytes):
    """Same stream, both paths: identical records (P bit for bit) and bit-identical latents."""
    from test_runtime import Clock, _frame_ends

    results = []
    for decoder in (edge_decoder, _FloatOnly(edge_decoder)):
        clock = Clock()
        runtime, adapter, out = _runtime(edge_bundle, decoder, clock)
        assert runtime._int8 == (decoder is edge_decoder)
        pos = 0
        for end in _frame_ends(psychometric_bytes):
            clock.advance_ms(16)
            adapter.on_data(psychometric_bytes[pos:end])
            pos = end
        recs = [json.loads(line) for line in out.getvalue().splitlines()]
        results.append([(r["type"], r.get("window"), r.get("p_perceived"), r.get("decision"),
                         r.get("seq"), r.get("reason")) for r in recs])
        if decoder is edge_decoder:  # the latent of the newest window, from the int8 rows
            ring, W = runtime.ingest.ring, edge_bundle.window_spec.window_samples
            latent8 = edge_decoder.encoder.latent_int8(ring.view(ring.head - W, ring.head))
        else:
            window = np.zeros((W, edge_bundle.n_channels), np.float32)
            runtime.ingest.ring.window(ring.head - W, ring.head, window)
            latent = edge_decoder.encoder.latent(window)
        runtime.close()
    assert results[0] == results[1]
    assert sum(r[0] == "decision" for r in results[0]) > 250
    assert np.array_equal(latent8, latent)


def _warm_ingest(bundle, decoder, *, seed: int, n_patches: int):
    """An int8 StreamIngest past its warm-up (3 s of resting virtual cortex) and the next
    n_patches 16-sample blocks of the same stream, for the steady-state tests."""
    from phosphene.cortex import VirtualCortex

    P = bundle.window_spec.patch_samples
    ingest = StreamIngest(bundle.n_channels, bundle.normaliser_config, 1312, quant=decoder.input_quant,
                          window_samples=bundle.window_spec.window_samples)
    stream = VirtualCortex(bundle.channel_map, seed=seed).stream("resting")
    x, _ = stream.read(3000)
    ingest.add(SampleBlock(0, 0, x))
    patches, _ = stream.read(n_patches * P)
    return ingest, [SampleBlock(k, 3000 + k * P, patches[k * P:(k + 1) * P]) for k in range(n_patches)]


def test_decision_path_allocates_nothing_collects_nothing_faults_nothing(edge_bundle, edge_decoder):
    """Steady state, 16-sample patches: ingest (normalise + quantise into the ring) and
    decode_int8 allocate no numpy memory, no garbage collection starts, no page fault."""
    import resource

    W, P = edge_bundle.window_spec.window_samples, edge_bundle.window_spec.patch_samples
    ingest, blocks = _warm_ingest(edge_bundle, edge_decoder, seed=1, n_patches=2000)

    def decide(block):
        ingest.add(block)
        stop = block.sample + P
        ingest.ring.lost_in(stop - W, stop)
        return edge_decoder.decode_int8(ingest.ring.view(stop - W, stop))

    for block in blocks[:500]:  # warm: every ring row, refresh and buffer touched once
        decide(block)
        ingest.prepare()
        ingest.normaliser.wait_prepared()
    inline_before = ingest.normaliser.slow_refreshes  # (the first block's, never prepared)
    started = []
    gc.callbacks.append(lambda phase, info: phase == "start" and started.append(info))
    domain = np.lib.tracemalloc_domain
    try:
        faults = 0
        for block in blocks[500:1250]:  # (tracemalloc off: its own tables would fault)
            f0 = resource.getrusage(resource.RUSAGE_THREAD).ru_minflt
            gc_before = len(started)
            decide(block)
            faults += resource.getrusage(resource.RUSAGE_THREAD).ru_minflt - f0
            assert len(started) == gc_before
            ingest.prepare()
            ingest.normaliser.wait_prepared()
            collect_in_idle()
        assert faults == 0
        tracemalloc.start()
        allocated = 0
        only_numpy = [tracemalloc.DomainFilter(True, domain)]
        R = ingest.normaliser.config.refresh_samples
        for block in blocks[1250:]:
            before = tracemalloc.take_snapshot().filter_traces(only_numpy)
            decide(block)
            after = tracemalloc.take_snapshot().filter_traces(only_numpy)
            held = sum(d.count_diff for d in after.compare_to(before, "lineno") if d.count_diff > 0)
            if block.sample // R != (block.sample + P) // R:
                assert held <= 2  # a refresh: the new center and 1/scale replace the old
            else:
                allocated += held
            ingest.prepare()
            ingest.normaliser.wait_prepared()
        assert allocated == 0  # no numpy buffer outlives a decision (transients: next test)
    finally:
        tracemalloc.stop()
        gc.callbacks.pop()
        ingest.close()
    assert ingest.normaliser.slow_refreshes == inline_before and ingest.normaliser.fast_refreshes >= 100


def test_numpy_allocates_nothing_per_decision(edge_bundle, edge_decoder):
    """Transients too: the most memory allocated while a decision runs (traced peak minus
    what was held before it) is a few array headers and Python scalars (~0.7 KB), never an
    array buffer (the float window was 48 KB, its int8 copy 12 KB, a 16-sample block 6 KB);
    the block that crosses a refresh boundary merges its statistics (~35 KB, freed)."""
    W, P = edge_bundle.window_spec.window_samples, edge_bundle.window_spec.patch_samples
    R = edge_bundle.normaliser_config.refresh_samples
    ingest, blocks = _warm_ingest(edge_bundle, edge_decoder, seed=2, n_patches=500)

    def decide(block):
        ingest.add(block)
        edge_decoder.decode_int8(ingest.ring.view(block.sample + P - W, block.sample + P))

    for block in blocks[:100]:
        decide(block)
        ingest.prepare()
        ingest.normaliser.wait_prepared()
    tracemalloc.start()
    try:
        worst = 0
        for block in blocks[100:]:
            before = tracemalloc.get_traced_memory()[0]
            tracemalloc.reset_peak()
            decide(block)
            if block.sample // R == (block.sample + P - 1) // R and block.sample % R:
                worst = max(worst, tracemalloc.get_traced_memory()[1] - before)
            ingest.prepare()
            ingest.normaliser.wait_prepared()
    finally:
        tracemalloc.stop()
        ingest.close()
    assert worst < 1024


def test_runtime_collects_garbage_only_between_batches(edge_bundle, edge_decoder, psychometric_bytes):
    from test_runtime import Clock, _frame_ends

    clock = Clock()
    runtime, adapter, _ = _runtime(edge_bundle, edge_decoder, clock)
    where = []

    def on_gc(phase, info):
        if phase == "start":
            names = []
            f = sys._getframe(1)
            while f is not None:
                names.append(f.f_code.co_name)
                f = f.f_back
            where.append("collect_in_idle" in names or "_decide" not in names)

    garbage = []  # cycles made on purpose: the collector has work
    gc.callbacks.append(on_gc)
    try:
        pos = 0
        for k, end in enumerate(_frame_ends(psychometric_bytes)):
            for _ in range(40):
                a = []
                a.append(a)
                garbage.append(a) if k % 50 == 0 else None
            clock.advance_ms(16)
            adapter.on_data(psychometric_bytes[pos:end])
            pos = end
    finally:
        gc.callbacks.remove(on_gc)
        runtime.close()
    assert where and all(where)
    assert runtime.summary()["decisions"] > 250


def test_bench_reports_stages_ratios_and_ends_its_load(edge_bundle_path):
    from phosphene.edge.benchmark import BenchConfig, bench_bundle, format_bench

    r = bench_bundle(edge_bundle_path, BenchConfig(runs=150, warmup=10, load=2, cpu=min(os.sched_getaffinity(0))))
    for key in ("invoke_us", "decision_us"):
        assert set(r[key]) == {"mean", "std", "p50", "p90", "p99", "max"}
    assert set(r["stages_us"]) == {"ring", "gather", "invoke", "probe"}
    assert set(r["float_path"]["stages_us"]) == {"normalise", "gather", "quantise", "invoke",
                                                 "dequantise_probe"}
    for stages in (r["stages_us"], r["float_path"]["stages_us"]):
        assert all({"p50", "p90", "p99", "max"} <= set(s) for s in stages.values())
    assert r["float_path"]["decision_mismatches"] == 0 and r["float_path"]["max_abs_dp"] < 1e-6
    assert set(r["ratios"]) == {"decision_p50_over_invoke_p50", "decision_p99_over_invoke_p99",
                                "decision_p99_over_invoke_after_decision_p99"}
    assert set(r["invoke_after_decision_us"]) == set(r["invoke_us"])
    # decisions split by whether their patch meets a statistics refresh
    assert set(r["other_decision_us"]) == set(r["decision_us"])
    assert r["refresh_decision_us"] is None or set(r["refresh_decision_us"]) == set(r["decision_us"])
    assert r["kernel"] == kernel_name()
    assert r["gc_during_decisions"] == 0
    assert r["load"]["processes"] == 2 and len(r["load"]["pids"]) == 2
    assert r["pinned_cpu"] == min(os.sched_getaffinity(0))
    for pid in r["load"]["pids"]:  # ended and reaped: no such process any more
        with pytest.raises(ProcessLookupError):
            os.kill(pid, 0)
    assert "decision / invoke" in format_bench(r)


def test_busy_load_ends_its_processes_on_error():
    from phosphene.edge.benchmark import busy_load

    with pytest.raises(RuntimeError), busy_load(2, max_s=60) as pids:
        for pid in pids:
            os.kill(pid, 0)  # running
        raise RuntimeError("the measurement failed")
    for pid in pids:
        with pytest.raises(ProcessLookupError):
            os.kill(pid, 0)


def test_decoder_int8_and_float_give_the_same_p(edge_bundle, edge_decoder):
    """decode_int8(quantize(window)) == decode(window); the folded probe's P is the Probe's
    on the dequantised latent within the float32 rounding it skips; latents bit-identical."""
    rng = np.random.default_rng(5)
    W, C = edge_bundle.window_spec.window_samples, edge_bundle.n_channels
    enc = edge_decoder.encoder
    for _ in range(20):
        window = np.clip(rng.standard_normal((W, C)) * 2, -8, 8).astype(np.float32)
        rows = enc.input_quant.quantize(window).reshape(1, W, C)
        p8 = edge_decoder.decode_int8(rows)[0]
        assert p8 == edge_decoder.decode(window)[0]
        p = float(enc.probe.p_perceived(enc.latent(window)))
        assert abs(p8 - p) < 1e-6 and (p8 >= enc.probe.threshold) == (p >= enc.probe.threshold)
        assert np.array_equal(enc.latent_int8(rows), enc.latent(window))
