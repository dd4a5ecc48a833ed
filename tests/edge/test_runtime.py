"""The decision loop, in process: real wire bytes from the simulator, the real decoder, the
real int8 interpreter; decisions checked against an offline computation on the same samples."""

from __future__ import annotations

import io
import json

import numpy as np
import pytest
from streams import record_stream

from phosphene.edge.interpreter import Encoder
from phosphene.edge.runtime import (
    DecisionSinks,
    Runtime,
    RuntimeConfig,
    SampleBlock,
    SampleRing,
    StimOnset,
)
from phosphene.edge.source import FrameAdapter
from phosphene.firmware_bridge.protocol import EventFrame, SampleFrame, StreamDecoder
from phosphene.geometry import map_for_channels
from phosphene.signal import normalise_recording

FRAME_MS = 16  # the simulator's default frame: 16 samples at 1 kHz


class Clock:
    """A clock the test moves: the runtime's only notion of time (ns)."""

    def __init__(self):
        self.ns = 1_000_000_000

    def __call__(self) -> int:
        return self.ns

    def advance_ms(self, ms: float) -> None:
        self.ns += int(ms * 1e6)


def make_runtime(bundle, decoder, *, clock=None, spec=None, **config):
    out = io.StringIO()
    runtime = Runtime(decoder, spec=spec or bundle.window_spec, normaliser_config=bundle.normaliser_config,
                      n_channels=bundle.n_channels, config=RuntimeConfig(**config),
                      sinks=DecisionSinks(stdout=out, json_stdout=True), status_stream=None,
                      **({"clock_ns": clock} if clock else {}))
    adapter = FrameAdapter(runtime, **({"clock_ns": clock} if clock else {}))
    return runtime, adapter, out


def records(out: io.StringIO) -> list[dict]:
    return [json.loads(line) for line in out.getvalue().splitlines()]


def feed_frames(adapter, data: bytes, clock: Clock | None = None, *, on_frame=None):
    """Feed the stream one frame at a time (as reads at real pace would deliver it)."""
    decoder = StreamDecoder()
    pos = 0
    for end in _frame_ends(data):
        adapter.on_data(data[pos:end])
        pos = end
        if clock is not None:
            clock.advance_ms(FRAME_MS / 3)  # several frames per patch here: never a stall
        if on_frame:
            on_frame(end)
    del decoder


def _frame_ends(data: bytes) -> list[int]:
    """Byte offsets where each intact frame ends (the stream is fault-free or byte-exact)."""
    import struct

    ends, pos = [], 0
    while True:
        i = data.find(b"\xa5\xc3\x9e\xd1", pos)
        if i < 0 or i + 24 > len(data):
            break
        length = struct.unpack_from("<H", data, i + 6)[0]
        end = i + 24 + length + 4
        if end > len(data):
            break
        ends.append(end)
        pos = end
    return ends


def offline(data: bytes, bundle):
    """Decode the byte stream offline: (samples (T, C) uV, {counter: present}, events, seq per sample)."""
    frames = StreamDecoder().feed(data)
    blocks = [f for f in frames if isinstance(f, SampleFrame)]
    T = max(f.sample_counter + f.n_samples for f in blocks)
    x = np.zeros((T, bundle.n_channels), np.float32)
    present = np.zeros(T, bool)
    seq = np.full(T, -1)
    for f in blocks:
        x[f.sample_counter:f.sample_counter + f.n_samples] = f.to_uv()
        present[f.sample_counter:f.sample_counter + f.n_samples] = True
        seq[f.sample_counter:f.sample_counter + f.n_samples] = f.seq
    events = [f for f in frames if isinstance(f, EventFrame)]
    return x, present, events, seq


# --------------------------------------------------------------------------------------
def test_triggered_decisions_are_exactly_the_manifest_window(edge_bundle, edge_decoder,
                                                             psychometric_bytes):
    runtime, adapter, out = make_runtime(edge_bundle, edge_decoder, mode="triggered")
    feed_frames(adapter, psychometric_bytes)
    decisions = [r for r in records(out) if r["type"] == "decision"]

    x, present, events, seq = offline(psychometric_bytes, edge_bundle)
    assert present.all()
    normalised = normalise_recording(x, edge_bundle.normaliser_config)  # the core, in one call
    encoder = Encoder(edge_bundle)
    spec = edge_bundle.window_spec
    assert len(events) >= 3 and len(decisions) == len(events)
    for ev, d in zip(events, decisions, strict=True):
        start, stop = spec.triggered_window(ev.sample_counter)
        assert start == ev.sample_counter + round(spec.offset_ms * spec.sample_rate_hz / 1000)
        assert d["window"] == [start, stop] and d["sample"] == stop - 1
        assert d["seq"] == seq[stop - 1] and d["onset_seq"] == ev.seq
        assert (d["electrode"], d["current_ua"], d["onset_sample"]) == (ev.electrode, ev.current_ua,
                                                                         ev.sample_counter)
        expected = encoder.decide(normalised[start:stop])
        assert d["p_perceived"] == expected.p_perceived
        assert d["decision"] == int(expected.perceived)
        assert set(d["latency_us"]) == {"read_parse", "normalise", "invoke", "probe", "write", "total"}
    assert runtime.summary()["decisions"] == len(events)


def test_a_pre_stimulus_task_decides_on_the_window_that_ends_at_onset(tmp_path, psychometric_bytes):
    """A probe named *_pre reads the 128 ms before onset; its decision is the offline one."""
    from tiny_bundle import make_tiny_bundle

    from phosphene.edge.bundle import load_bundle
    from phosphene.edge.runtime import BundleDecoder

    bundle = load_bundle(make_tiny_bundle(tmp_path / "b", tasks=("psychometric", "psychometric_pre")))
    spec = bundle.window_for("psychometric_pre")
    assert spec.offset_ms == -spec.window_ms and bundle.window_for().offset_ms == 170.0
    decoder = BundleDecoder(bundle, task="psychometric_pre")
    _, adapter, out = make_runtime(bundle, decoder, spec=spec, mode="triggered")
    feed_frames(adapter, psychometric_bytes)
    decisions = [r for r in records(out) if r["type"] == "decision"]

    x, _, events, _ = offline(psychometric_bytes, bundle)
    normalised = normalise_recording(x, bundle.normaliser_config)
    encoder = Encoder(bundle, task="psychometric_pre")
    warm = bundle.normaliser_config.warmup_samples
    decided = [ev for ev in events if ev.sample_counter - spec.window_samples >= warm]
    assert len(decided) >= 3 and len(decisions) >= len(decided)
    by_onset = {d["onset_sample"]: d for d in decisions}
    for ev in decided:
        d = by_onset[ev.sample_counter]
        assert d["window"] == [ev.sample_counter - spec.window_samples, ev.sample_counter]
        expected = encoder.decide(normalised[ev.sample_counter - spec.window_samples:ev.sample_counter])
        assert d["p_perceived"] == expected.p_perceived


def test_continuous_cadence_one_line_per_patch(edge_bundle, edge_decoder, psychometric_bytes):
    runtime, adapter, out = make_runtime(edge_bundle, edge_decoder, mode="continuous")
    feed_frames(adapter, psychometric_bytes)
    recs = records(out)
    spec = edge_bundle.window_spec
    P, W = spec.patch_samples, spec.window_samples
    T = runtime.ingest.next_sample
    # exactly one record per patch boundary, in order
    assert [r["sample"] for r in recs] == list(range(P - 1, T, P))
    warm = edge_bundle.normaliser_config.warmup_samples
    for r in recs:
        start = r["sample"] + 1 - W
        if start < warm:
            assert r["type"] == "no_decision" and r["reason"] == "warming_up"
        else:
            assert r["type"] == "decision" and r["window"] == [start, start + W]
    x, _, _, _ = offline(psychometric_bytes, edge_bundle)
    normalised = normalise_recording(x, edge_bundle.normaliser_config)
    encoder = Encoder(edge_bundle)
    for r in [r for r in recs if r["type"] == "decision"][::40]:
        a, b = r["window"]
        assert r["p_perceived"] == encoder.decide(normalised[a:b]).p_perceived


@pytest.mark.parametrize("max_lost", [0, 16])
def test_lost_frames_never_decided_beyond_the_bound(edge_bundle, edge_decoder, max_lost):
    from phosphene.firmware_bridge.simulator import FaultConfig

    data, counts = record_stream(edge_bundle.channel_map, seconds=5.0, seed=3,
                                 faults=FaultConfig(drop_frames_p=0.03))
    assert counts.frames_dropped > 0
    runtime, adapter, out = make_runtime(edge_bundle, edge_decoder, mode="continuous",
                                         max_lost_samples=max_lost)
    feed_frames(adapter, data)
    _, present, _, _ = offline(data, edge_bundle)
    recs = records(out)
    decided = [r for r in recs if r["type"] == "decision"]
    refused = [r for r in recs if r.get("reason") == "lost_samples"]
    assert decided and refused
    # the cadence holds through the gaps: one line per patch boundary
    P = edge_bundle.window_spec.patch_samples
    assert [r["sample"] for r in recs] == list(range(P - 1, runtime.ingest.next_sample, P))
    for r in decided:
        a, b = r["window"]
        assert (~present[a:b]).sum() <= max_lost
    for r in refused:
        a, b = r["window"]
        assert (~present[a:b]).sum() == r["lost"] > max_lost
    s = runtime.summary()
    assert s["samples_lost"] == (~present[:runtime.ingest.next_sample]).sum()
    runtime.set_external_counters(adapter.counters())
    assert runtime.summary()["frames_lost"] == counts.expected_frames_lost
    # it resumes: a decision after the last gap
    last_gap = np.flatnonzero(~present).max()
    assert any(r["window"][0] > last_gap for r in decided)


def test_stall_gives_no_decision_and_drops_pending_trials_then_resumes(edge_bundle, edge_decoder,
                                                                       psychometric_bytes):
    clock = Clock()
    runtime, adapter, out = make_runtime(edge_bundle, edge_decoder, clock=clock, mode="triggered",
                                         stall_ms=100)
    _, _, events, _ = offline(psychometric_bytes, edge_bundle)
    spec = edge_bundle.window_spec
    # cut the stream inside the second trial's window: that trial is pending when input stops
    stall_at = spec.triggered_window(events[1].sample_counter)[0] + 40
    decoder, prev = StreamDecoder(), 0
    for cut in _frame_ends(psychometric_bytes):
        frames = decoder.feed(psychometric_bytes[prev:cut])
        prev = cut
        if any(isinstance(f, SampleFrame) and f.sample_counter + f.n_samples >= stall_at for f in frames):
            break
    feed_frames(adapter, psychometric_bytes[:cut], clock)
    runtime.poll()
    assert not [r for r in records(out) if r["type"] == "no_decision"]
    clock.ns = runtime._last_input_ns + 99_000_000  # 99 ms without samples
    runtime.poll()
    assert not [r for r in records(out) if r["type"] == "no_decision"]
    clock.advance_ms(2)  # 101 ms without samples
    runtime.poll()
    stall = [r for r in records(out) if r.get("reason") == "stall"]
    assert stall and any(r.get("onset_sample") == events[1].sample_counter for r in stall)
    clock.advance_ms(50)
    runtime.poll()
    assert len([r for r in records(out) if r.get("reason") == "stall"]) == len(stall)  # rate-limited
    clock.advance_ms(60)
    runtime.poll()
    assert len([r for r in records(out) if r.get("reason") == "stall"]) == len(stall) + 1
    # input comes back: the stalled trial is never decided late, later trials are decided
    before = out.getvalue()
    feed_frames(adapter, psychometric_bytes[cut:], clock)
    after = [json.loads(line) for line in out.getvalue()[len(before):].splitlines()]
    decided_onsets = {r["onset_sample"] for r in records(out) if r["type"] == "decision"}
    assert events[1].sample_counter not in decided_onsets
    assert {e.sample_counter for e in events[2:]} <= decided_onsets
    assert all(r["type"] == "decision" for r in after)


def test_mismatched_stream_is_refused_and_healthy_stream_resumes(edge_bundle, edge_decoder):
    clock = Clock()
    runtime, adapter, out = make_runtime(edge_bundle, edge_decoder, clock=clock, mode="continuous",
                                         stall_ms=100)
    wrong, _ = record_stream(map_for_channels(64), seconds=1.0)
    feed_frames(adapter, wrong, clock)
    recs = records(out)
    assert recs and all(r["reason"] == "stream_mismatch" and r["stream_channels"] == 64 for r in recs)
    assert runtime.summary()["decisions"] == 0
    # a sample-rate mismatch (in process: the wire simulator always runs at 1 kHz)
    C = edge_bundle.n_channels
    block = SampleBlock(seq=1, sample=0, data=np.ones((16, C), np.float32), sample_rate_hz=2000.0)
    clock.advance_ms(200)
    runtime.process_batch(clock(), [block])
    assert records(out)[-1]["reason"] == "stream_mismatch" and records(out)[-1]["stream_rate_hz"] == 2000.0
    # the right array comes back: decisions after its warm-up
    good, _ = record_stream(edge_bundle.channel_map, seconds=1.5)
    n_before = len(records(out))
    feed_frames(adapter, good, clock)
    new = records(out)[n_before:]
    assert any(r["type"] == "decision" for r in new)
    assert {r.get("reason") for r in new if r["type"] == "no_decision"} <= {"warming_up"}


def test_device_restart_rewarms_and_resumes(edge_bundle, edge_decoder):
    from phosphene.firmware_bridge.simulator import FaultConfig

    data, counts = record_stream(edge_bundle.channel_map, seconds=4.0,
                                 faults=FaultConfig(restart_seq_at_s=2.0))
    assert counts.seq_restarts == 1
    runtime, adapter, out = make_runtime(edge_bundle, edge_decoder, mode="continuous")
    feed_frames(adapter, data)
    recs = records(out)
    assert runtime.summary()["resets"] == 1
    # after the restart the counter starts again at 0: warming up, then decisions again
    i = next(k for k, r in enumerate(recs) if k and r["sample"] < recs[k - 1]["sample"])
    after = recs[i:]
    assert after[0]["reason"] == "warming_up"
    assert after[-1]["type"] == "decision"


def test_backlog_is_stale_not_decided(edge_bundle, edge_decoder, psychometric_bytes):
    runtime, adapter, out = make_runtime(edge_bundle, edge_decoder, mode="continuous", stall_ms=100)
    adapter.on_data(psychometric_bytes)  # six seconds in one read: we are far behind
    recs = records(out)
    head = runtime.ingest.ring.head
    assert any(r.get("reason") == "stale" for r in recs)
    for r in recs:
        if r["type"] == "decision":
            assert head - r["window"][1] < 100  # only the freshest windows


def test_late_event_decided_from_the_ring_within_the_staleness_bound(edge_bundle, edge_decoder):
    C = edge_bundle.n_channels
    clock = Clock()
    runtime, _, out = make_runtime(edge_bundle, edge_decoder, clock=clock, mode="triggered", stale_ms=100)
    rng = np.random.default_rng(0)
    for k in range(60):  # 960 samples, each 16-sample block read when its last sample is due
        clock.advance_ms(16)
        runtime.process_batch(clock(), [SampleBlock(k, 16 * k, rng.lognormal(1, 0.3, (16, C)).astype(np.float32))])
    recent = 960 - 50 - 298  # window [782, 910): complete 50 ms before its event arrives
    old = 960 - 150 - 298  # window complete 150 ms before: deciding now would be deciding late
    runtime.process_batch(clock(), [StimOnset(99, recent, 25, 40.0), StimOnset(100, old, 25, 40.0)])
    d, stale = records(out)
    assert d["type"] == "decision" and d["window"] == [recent + 170, recent + 298]
    assert stale["reason"] == "stale" and stale["onset_sample"] == old and stale["age_ms"] == 150.0


def test_backlog_after_a_pause_is_stale_by_the_clock_in_both_modes(edge_bundle, edge_decoder,
                                                                   psychometric_bytes):
    """Reads of one frame each, as a pty delivers them: the device (or this reader) paused
    1.5 s and the backlog then arrives in a burst. Every window whose last sample was due
    more than the bound ago is skipped; the newest data are decided again at once."""
    ends = _frame_ends(psychometric_bytes)
    pause_at = len(ends) // 3
    for mode in ("continuous", "triggered"):
        clock = Clock()  # a sample frame is read when its last sample is due: t = 1 s + sample ms
        runtime, adapter, out = make_runtime(edge_bundle, edge_decoder, clock=clock, mode=mode, stale_ms=100)
        decoder, pos, written_at, pause_sample = StreamDecoder(), 0, [], None
        for k, end in enumerate(ends):
            chunk, pos = psychometric_bytes[pos:end], end
            for f in decoder.feed(chunk):
                if isinstance(f, SampleFrame):
                    due = 1_000_000_000 + (f.sample_counter + f.n_samples) * 1_000_000
                    if k >= pause_at and pause_sample is None:
                        pause_sample = f.sample_counter  # silent from here for 1.5 s ...
                    if pause_sample is not None and f.sample_counter < pause_sample + 1500:
                        due = 1_000_000_000 + (pause_sample + 1500) * 1_000_000  # ... then a burst
                    clock.ns = max(clock.ns, due)
            n_before = len(out.getvalue())
            adapter.on_data(chunk)
            written_at += [(json.loads(x), clock()) for x in out.getvalue()[n_before:].splitlines()]
        recs = [r for r, _ in written_at]
        decided = [(r, t) for r, t in written_at if r["type"] == "decision"]
        stale = [r for r in recs if r.get("reason") == "stale"]
        assert decided and stale, mode
        for r, t in decided:  # nothing is decided later than the bound after its last sample was due
            assert t - (1_000_000_000 + r["window"][1] * 1_000_000) <= 100_000_000, (mode, r["window"])
        after = [r for r, _ in decided if r["window"][0] > pause_sample + 1500]
        assert after, f"{mode}: decisions resume after the backlog"
        assert all(r["window"][1] <= pause_sample + 1500 - 100 for r in stale), mode
        if mode == "continuous":
            # one line for the skipped run, not one per 16 ms window
            assert len(stale) == 1 and stale[0]["skipped"] >= 80
        assert runtime.summary()["stale_windows"] >= len(stale)


def test_ring_buffer_wraps_and_counts_invalid():
    ring = SampleRing(n_channels=2, capacity=10)
    ring.clear(100)
    ring.write(100, np.arange(16, dtype=np.float32).reshape(8, 2), valid=True, seq=1)
    ring.write(108, np.full((4, 2), -1, np.float32), valid=False)
    ring.write(112, np.full((3, 2), 7, np.float32), valid=True, seq=3)
    assert ring.head == 115 and ring.oldest == 105
    assert not ring.holds(104, 110) and ring.holds(105, 115)
    out = np.zeros((10, 2), np.float32)
    assert ring.window(105, 115, out) == 4
    assert out[:3, 0].tolist() == [10, 12, 14] and out[-1, 0] == 7
    assert ring.seq_at(114) == 3 and ring.seq_at(109) == -1
