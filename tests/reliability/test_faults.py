"""Faults on the wire, driven through the real runtime over real ptys (issue: reliability).

For each fault: the runtime keeps running, its counters equal what the simulator injected,
no decision is made on a window holding more lost samples than the bound, every refusal
is justified, and decisions resume once the input is healthy. The soak version is
test_soak.py (`make soak`).
"""

from __future__ import annotations

import pytest
from fault_harness import RateSource, Segment, cortex, drive, lost_in
from tiny_bundle import make_tiny_bundle

from phosphene.firmware_bridge.simulator import FaultConfig
from phosphene.geometry import map_for_channels


@pytest.fixture(scope="module")
def bundle_path(tmp_path_factory):
    return make_tiny_bundle(tmp_path_factory.mktemp("faults") / "bundle")


LOSSY = {
    "byte_drops": FaultConfig(drop_bytes_p=2e-5),
    "bit_flips": FaultConfig(flip_bits_p=3e-6),
    "dropped_frames": FaultConfig(drop_frames_p=0.03),
    "duplicated_and_reordered": FaultConfig(duplicate_frames_p=0.03, reorder_frames_p=0.03),
    "garbage_bursts": FaultConfig(garbage_burst_bytes=700, garbage_every_s=0.7),
    "everything_at_once": FaultConfig(drop_bytes_p=5e-6, flip_bits_p=1e-6, drop_frames_p=0.01,
                                      duplicate_frames_p=0.01, reorder_frames_p=0.01,
                                      garbage_burst_bytes=300, garbage_every_s=1.3),
}


@pytest.mark.parametrize("max_lost", [0, 16])
@pytest.mark.parametrize("name", list(LOSSY))
def test_lossy_link_counts_exactly_and_never_decides_on_missing_data(bundle_path, tmp_path, name, max_lost):
    res = drive(bundle_path, [Segment(cortex("resting"), 12.0, LOSSY[name])], tmp_path,
                max_lost_samples=max_lost)
    s, sim = res.summary, res.simulators[0]
    # the counters are a running balance of exactly what was injected
    assert s["frames_lost"] == sim.counts.expected_frames_lost
    assert s["duplicates"] == sim.counts.expected_duplicates
    assert s["reordered"] == sim.counts.expected_reordered
    assert s["bytes_discarded"] == sim.counts.expected_bytes_discarded
    assert s["crc_errors"] <= sim.counts.frames_corrupted
    # A frame that arrives after a later one is not spliced back: the normaliser is causal
    # and has moved on, so its samples count as lost (docs/reliability.md).
    lost = sim.undelivered_samples(late=True)
    assert s["samples_lost"] == sum(n for _, _, n in lost)
    assert s["late_blocks"] == len(sim.undelivered_samples(late=True)) - len(sim.undelivered_samples())
    if name == "garbage_bursts":  # garbage between frames costs bytes, never a frame
        assert not lost and s["bytes_discarded"] == sim.counts.garbage_bytes > 0
    else:
        assert lost, "the fault rate injected no loss: the test would prove nothing"
    decisions = res.of("decision")
    assert len(decisions) > 100
    for d in decisions:  # never decided on more missing data than the bound allows
        assert lost_in(tuple(d["window"]), lost) <= max_lost, d
    for r in res.of("no_decision", "lost_samples"):  # and never refused a healthy window
        assert lost_in(tuple(r["window"]), lost) > max_lost, r
    # decisions resume within one window: every cadence window that is healthy was decided
    decided = {tuple(d["window"]) for d in decisions}
    W = res.records and decisions[0]["window"][1] - decisions[0]["window"][0]
    # a run of stale windows after a backlog is one line: its newest window and `skipped`,
    # the number of consecutive cadence windows (16 samples apart) it covers
    refused_other = {(r["window"][0] - 16 * j, r["window"][1] - 16 * j)
                     for r in res.of("no_decision") if r.get("window")
                     and r["reason"] in ("warming_up", "stale") for j in range(r.get("skipped", 1))}
    first = min(w[0] for w in decided)
    last = max(w[1] for w in decided)
    for stop in range(first + W, last + 1, 16):
        window = (stop - W, stop)
        if lost_in(window, lost) <= max_lost and window not in refused_other:
            assert window in decided, f"healthy window {window} was not decided"


def test_stall_of_seconds_is_reported_then_decisions_resume(bundle_path, tmp_path):
    res = drive(bundle_path, [Segment(cortex("resting"), 8.0, FaultConfig(stall_ms=2500), speed=2.0)],
                tmp_path)
    s, sim = res.summary, res.simulators[0]
    assert sim.counts.stalls == 1
    stalls = res.of("no_decision", "stall")
    assert stalls, "a 2.5 s silence must be reported as a stall"
    t_stall = stalls[0].get("time_unix", None)
    after = [d for d in res.of("decision") if t_stall is None or d["time_unix"] > t_stall]
    assert after, "decisions must resume after the stall"
    # the backlog the device sends after the silence is never decided late
    for d in res.of("decision"):
        assert d["latency_us"]["total"] < 100_000
    assert s["frames_lost"] == 0 and s["samples_lost"] == 0


def test_device_disappears_and_comes_back(bundle_path, tmp_path):
    res = drive(bundle_path, [Segment(cortex("resting"), 4.0), Segment(cortex("resting", seed=1), 4.0,
                                                                       new_device=True)], tmp_path)
    s = res.summary
    assert s["disconnects"] >= 1 and s["reconnects"] >= 1
    second_start = res.wall[1][0]
    assert [d for d in res.of("decision") if d["time_unix"] > second_start], "no decision after reconnect"
    assert s["frames_lost"] == 0  # a new device run is a restart, not a loss
    assert s["resets"] >= 1


@pytest.mark.parametrize("change", ["channels", "sample_rate"])
def test_stream_format_change_mid_stream_is_refused_then_resumes(bundle_path, tmp_path, change):
    other = (cortex("resting", channel_map=map_for_channels(64)) if change == "channels"
             else RateSource(cortex("resting"), 500.0))
    res = drive(bundle_path, [Segment(cortex("resting"), 3.0), Segment(other, 2.0),
                              Segment(cortex("resting", seed=2), 4.0)], tmp_path)
    (_a0, a1), (b0, b1), (c0, _c1) = res.wall
    decisions = res.of("decision")
    assert [d for d in decisions if d["time_unix"] < a1 + 0.05]
    assert not [d for d in decisions if b0 + 0.2 < d["time_unix"] < b1], "decided on a mismatched stream"
    assert res.of("no_decision", "stream_mismatch")
    assert [d for d in decisions if d["time_unix"] > c0], "decisions must resume on the right stream"
    assert res.summary["mismatched_blocks"] > 0


def test_device_restarting_its_sequence_numbers(bundle_path, tmp_path):
    res = drive(bundle_path, [Segment(cortex("resting"), 8.0, FaultConfig(restart_seq_at_s=3.0))], tmp_path)
    s, sim = res.summary, res.simulators[0]
    assert sim.counts.seq_restarts == 1 and s["seq_restarts"] == 1
    assert s["frames_lost"] == sim.counts.expected_frames_lost == 0
    warm = [i for i, r in enumerate(res.records) if r.get("reason") == "warming_up"]
    decided = [i for i, r in enumerate(res.records) if r["type"] == "decision"]
    # warm-up again after the restart (the normaliser's statistics belong to the old run) ...
    assert any(i > decided[0] for i in warm)
    # ... then decisions again
    assert decided[-1] > max(warm)


@pytest.mark.parametrize("refuse", [False, True])
def test_eight_channels_dying_raise_an_input_health_warning_within_seconds(bundle_path, tmp_path, refuse):
    from fault_harness import DeadChannels

    from phosphene.edge.bundle import load_bundle

    ref = load_bundle(bundle_path).manifest["input_health"]
    killed = [c for c in range(96) if c not in ref["dead_at_calibration"]][::11][:8]
    kill_s = 3.0
    res = drive(bundle_path, [Segment(DeadChannels(cortex("psychometric"), killed, kill_s), 7.0, speed=1.0)],
                tmp_path, refuse_unhealthy=refuse)
    t0 = res.wall[0][0]
    health = res.of("health")
    assert health, "no input-health line for 8 dead channels"
    assert health[0]["time_unix"] > t0 + kill_s, "a warning before anything was wrong"
    for h in health:  # never a channel that did not die
        assert set(h["dead"] + h["flat"] + h["saturated"]) <= set(killed), h
    first = next((h for h in health if set(h["dead"]) == set(killed)), None)
    assert first is not None and not first["ok"], f"not all 8 dead channels were named: {health}"
    assert first["time_unix"] - (t0 + kill_s) < 3.0, "the warning came late"
    before = [d for d in res.of("decision") if d["time_unix"] < t0 + kill_s]
    assert before, "decisions on healthy input"
    after = [d for d in res.of("decision") if d["time_unix"] > first["time_unix"] + 0.05]
    assert res.summary["input_health"]["dead"] == first["dead"]
    if refuse:
        assert not after, "decided on input that input health refused"
        assert res.of("no_decision", "unhealthy_input")
    else:
        assert after, "without --refuse-unhealthy, decisions go on (reported, not refused)"
