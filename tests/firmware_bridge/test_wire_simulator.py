"""The array simulator: frame content and timing, and fault counts that match the decoder's."""

from __future__ import annotations

import io
import threading

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from phosphene.firmware_bridge.protocol import (
    EventFrame,
    SampleFrame,
    StatusFrame,
    StatusState,
    StreamDecoder,
    wire_roundtrip_uv,
)
from phosphene.firmware_bridge.simulator import (
    CortexSource,
    DatasetSource,
    FaultConfig,
    Simulator,
    SimulatorConfig,
)

NO_FAULTS = FaultConfig()


def simulate(duration_s: float, *, kind: str = "psychometric", seed: int = 0, faults=NO_FAULTS,
             **config) -> tuple[Simulator, bytes]:
    sim = Simulator(CortexSource(kind, seed=seed), SimulatorConfig(speed=0, seed=seed, faults=faults,
                                                                   **config))
    buf = io.BytesIO()
    sim.run(buf, duration_s)
    return sim, buf.getvalue()


def decode(data: bytes, chunk: int = 65536):
    d = StreamDecoder()
    frames = []
    for i in range(0, len(data), chunk):
        frames += d.feed(data[i:i + chunk])
    return d, frames


def test_clean_stream_content_counters_and_events():
    sim, data = simulate(8.0)
    d, frames = decode(data)
    c, s = sim.counts, d.stats
    assert c.done and c.frames_sent == c.frames_generated == s.frames_ok == len(frames)
    assert c.bytes_sent == len(data) == s.bytes_received
    assert (s.frames_lost, s.duplicates, s.reordered, s.bytes_discarded, s.crc_errors) == (0,) * 5
    assert c.expected_frames_lost == c.expected_bytes_discarded == 0
    # a run opens with BOOT and closes with STOPPED; sequence numbers are 0, 1, 2, ...
    assert isinstance(frames[0], StatusFrame) and frames[0].boot
    assert isinstance(frames[-1], StatusFrame) and frames[-1].state == StatusState.STOPPED
    assert [f.seq for f in frames] == list(range(len(frames)))
    samples = [f for f in frames if isinstance(f, SampleFrame)]
    assert len(samples) == 8000 // 16 == c.sample_frames
    assert [f.sample_counter for f in samples] == list(range(0, 8000, 16))
    assert all(f.n_channels == 96 and f.sample_rate_hz == 1000 for f in samples)
    # the data is the virtual cortex's as float16 microvolts, exactly (read in the
    # simulator's chunks: the generator's random draws depend on the chunking)
    mua, events = cortex_reference("psychometric", 0, 8000)
    assert all(f.sample_format == "float16" and f.scale_uv == 1.0 for f in samples)
    got = np.concatenate([f.to_uv() for f in samples])
    assert np.array_equal(got, wire_roundtrip_uv(mua)[0]) and c.samples_clipped == 0
    # each stimulation: an event frame just before the sample frame holding its onset
    ev_frames = [f for f in frames if isinstance(f, EventFrame)]
    assert len(events) >= 4 and len(ev_frames) == len(events) == c.event_frames
    for ev, ef in zip(events, ev_frames):
        assert (ef.sample_counter, ef.electrode, ef.current_ua) == (ev.sample, ev.electrode,
                                                                     pytest.approx(ev.current_ua))
        nxt = next(f for f in frames[frames.index(ef):] if isinstance(f, SampleFrame))
        assert nxt.sample_counter <= ev.sample < nxt.sample_counter + nxt.n_samples


def cortex_reference(kind: str, seed: int, n: int):
    ref = CortexSource(kind, seed=seed)
    chunks = [ref.read(SimulatorConfig().chunk_samples) for _ in range(n // 256 + 1)]
    mua = np.concatenate([m for m, _ in chunks])[:n]
    return mua, [e for _, evs in chunks for e in evs if e.sample < n]


@pytest.mark.parametrize("fmt, scale, expect_scale", [("int16", None, 0.02), ("int16", 0.05, 0.05),
                                                      ("float16", 0.5, 0.5)])
def test_wire_format_and_scale_are_configurable(fmt, scale, expect_scale):
    sim, data = simulate(1.0, kind="resting", sample_format=fmt, scale_uv=scale)
    assert sim.config.scale_uv == expect_scale
    _, frames = decode(data)
    samples = [f for f in frames if isinstance(f, SampleFrame)]
    assert {(f.sample_format, f.scale_uv) for f in samples} == {(fmt, float(np.float32(expect_scale)))}
    mua, _ = cortex_reference("resting", 0, len(samples) * 16)
    seen, clipped = wire_roundtrip_uv(mua, fmt, expect_scale)
    assert np.array_equal(np.concatenate([f.to_uv() for f in samples]), seen)
    assert sim.counts.samples_clipped == clipped


def test_on_wire_sees_exactly_the_bytes_written():
    got = []
    faults = FaultConfig(drop_bytes_p=1e-4, garbage_burst_bytes=300, garbage_every_s=0.3,
                         duplicate_frames_p=0.05, restart_seq_at_s=1.0)
    sim = Simulator(CortexSource("resting"), SimulatorConfig(speed=0, faults=faults), on_wire=got.append)
    buf = io.BytesIO()
    sim.run(buf, 2.0)
    assert b"".join(got) == buf.getvalue() and len(got) > 100
    assert sim.counts.bytes_sent == len(buf.getvalue())


FAULT_CASES = {
    "drop_bytes": FaultConfig(drop_bytes_p=2e-5),
    "flip_bits": FaultConfig(flip_bits_p=3e-6),
    "drop_frames": FaultConfig(drop_frames_p=0.05),
    "duplicate_frames": FaultConfig(duplicate_frames_p=0.05),
    "reorder_frames": FaultConfig(reorder_frames_p=0.05),
    "garbage": FaultConfig(garbage_burst_bytes=3000, garbage_every_s=0.7),
    "restart": FaultConfig(restart_seq_at_s=2.5, drop_frames_p=0.02),
    "everything": FaultConfig(drop_bytes_p=1e-5, flip_bits_p=1e-6, drop_frames_p=0.03,
                              duplicate_frames_p=0.03, reorder_frames_p=0.03, garbage_burst_bytes=777,
                              garbage_every_s=1.1, restart_seq_at_s=3.3),
}
INJECTED = {"drop_bytes": "bytes_dropped", "flip_bits": "bits_flipped", "drop_frames": "frames_dropped",
            "duplicate_frames": "frames_duplicated", "reorder_frames": "frames_reordered",
            "garbage": "garbage_bytes", "restart": "seq_restarts", "everything": "frames_corrupted"}


@pytest.mark.parametrize("case", list(FAULT_CASES))
def test_reported_loss_equals_injected_loss_exactly(case):
    sim, data = simulate(6.0, faults=FAULT_CASES[case], seed=3)
    c = sim.counts
    assert getattr(c, INJECTED[case]) > 0, "the fault was never injected"
    d, frames = decode(data, chunk=4093)
    s = d.stats
    assert s.frames_lost == c.expected_frames_lost
    assert s.duplicates == c.expected_duplicates
    assert s.reordered == c.expected_reordered
    assert s.bytes_discarded == c.expected_bytes_discarded
    assert s.seq_restarts == c.seq_restarts
    # and what arrived is the simulator's data: no frame with a wrong payload
    assert all(isinstance(f, (SampleFrame, EventFrame, StatusFrame)) for f in frames)
    if case in ("drop_frames", "drop_bytes", "flip_bits"):
        assert c.expected_frames_lost == c.frames_dropped + c.frames_corrupted > 0
    if case == "duplicate_frames":
        assert s.duplicates == c.frames_duplicated
    if case == "reorder_frames":
        assert s.reordered == c.frames_reordered and s.frames_lost == 0


@settings(max_examples=8, deadline=None)
@given(seed=st.integers(0, 10_000), drop=st.floats(0, 0.1), dup=st.floats(0, 0.1),
       reorder=st.floats(0, 0.1), flip=st.floats(0, 2e-6))
def test_loss_balance_closes_for_random_fault_mixes(seed, drop, dup, reorder, flip):
    faults = FaultConfig(drop_frames_p=drop, duplicate_frames_p=dup, reorder_frames_p=reorder,
                         flip_bits_p=flip)
    sim, data = simulate(2.0, faults=faults, seed=seed, kind="resting")
    c = sim.counts
    s = decode(data)[0].stats
    assert (s.frames_lost, s.duplicates, s.reordered, s.bytes_discarded) == (
        c.expected_frames_lost, c.expected_duplicates, c.expected_reordered, c.expected_bytes_discarded)


def test_restart_resets_sequence_and_sample_counter():
    sim, data = simulate(3.0, faults=FaultConfig(restart_seq_at_s=1.0), status_every_s=0)
    _, frames = decode(data)
    boots = [i for i, f in enumerate(frames) if isinstance(f, StatusFrame) and f.boot]
    assert len(boots) == 2 and frames[boots[1] - 1].state == StatusState.STOPPED
    assert frames[boots[0]].boot_id != frames[boots[1]].boot_id
    after = [f for f in frames[boots[1]:] if isinstance(f, SampleFrame)]
    assert frames[boots[1]].seq == 0 and after[0].sample_counter == 0
    assert sim.counts.seq_restarts == 1


def test_pacing_follows_absolute_deadlines():
    sim = Simulator(CortexSource("resting"), SimulatorConfig(speed=8.0))
    counts = sim.run(io.BytesIO(), 2.0)
    # 2 s of stream at 8x: 250 ms of wall time; deadlines are absolute, so no accumulated drift
    assert 0.25 <= counts.elapsed_s < 0.25 + 0.6
    assert counts.stream_s == pytest.approx(2.0, abs=0.016)


def test_stall_and_stop_from_another_thread():
    seen = threading.Event()
    config = SimulatorConfig(speed=0, progress_every_s=0.0,
                             faults=FaultConfig(stall_ms=40, stall_every_s=0.5))
    sim = Simulator(CortexSource("resting"), config,
                    on_progress=lambda c: seen.set() if c.stalls >= 3 else None)
    buf = io.BytesIO()
    sim.start(buf, duration_s=None)
    assert seen.wait(30), "the simulator never reached its third stall"
    sim.stop()
    assert sim.wait(10) and sim.error is None
    c = sim.counts
    assert c.stalls >= 3 and c.stall_ms_total == 40 * c.stalls
    assert c.elapsed_s >= 0.04 * c.stalls
    _, frames = decode(buf.getvalue())
    assert frames[-1].state == StatusState.STOPPED  # stopping still closes the run


def test_dataset_source_loops_with_its_trials(tiny_dataset):
    session = tiny_dataset.sessions_of("psychometric")[0]
    src = DatasetSource(tiny_dataset, session.session)
    T = session.n_samples
    mua, events = src.read(2 * T + 100)
    ref = np.asarray(tiny_dataset.mua(session.session))
    assert np.array_equal(mua[:T], ref) and np.array_equal(mua[T:2 * T], ref)
    trials = tiny_dataset.trials.select(tiny_dataset.trials.session == session.session)
    onsets = sorted(int(o) for o in trials.onset_sample)
    assert [e.sample for e in events if e.sample < T] == onsets
    assert [e.sample - T for e in events if T <= e.sample < 2 * T] == onsets
    sim = Simulator(DatasetSource(tiny_dataset, session.session), SimulatorConfig(speed=0))
    buf = io.BytesIO()
    sim.run(buf, 1.0)
    _, frames = decode(buf.getvalue())
    first = next(f for f in frames if isinstance(f, SampleFrame))
    assert np.array_equal(first.to_uv(), wire_roundtrip_uv(ref[:16])[0])


def test_bad_configuration_says_what_to_fix():
    with pytest.raises(ValueError, match="drop_frames_p is a probability"):
        FaultConfig(drop_frames_p=1.5)
    with pytest.raises(ValueError, match="frame_samples"):
        SimulatorConfig(frame_samples=0)
    with pytest.raises(ValueError, match="speed"):
        SimulatorConfig(speed=-1)
    with pytest.raises(ValueError, match="sample_format"):
        SimulatorConfig(sample_format="float32")
    with pytest.raises(ValueError, match="scale_uv"):
        SimulatorConfig(scale_uv=0.0)
    assert (SimulatorConfig().sample_format, SimulatorConfig().scale_uv) == ("float16", 1.0)
    assert SimulatorConfig(sample_format="int16").scale_uv == 0.02
    with pytest.raises(ValueError, match="duration_s"):
        Simulator(CortexSource("resting")).run(io.BytesIO(), 0.0)
    with pytest.raises(TypeError, match="cannot write frames"):
        Simulator(CortexSource("resting")).run(3.5, 1.0)

