"""Input health: the reference from calibration data, and the streaming monitor on the raw
uV a wire delivers (virtual-cortex MUA rounded to the simulator's 0.02 uV per LSB)."""

from __future__ import annotations

import json
import tracemalloc

import numpy as np
import pytest

from phosphene.cortex import VirtualCortex
from phosphene.edge.health import (
    HEALTH_FORMAT,
    HealthThresholds,
    InputHealth,
    calibration_stats,
    wire_rails_uv,
)
from phosphene.firmware_bridge.protocol import quantize_uv, samples_to_uv
from phosphene.firmware_bridge.simulator import DEFAULT_SCALE_UV

FS = 1000.0
BLOCK = 16  # the simulator's frame: what update() is called with


def wire(x: np.ndarray) -> np.ndarray:
    """What the runtime receives for x: int16 at 0.02 uV per LSB, back to float32 uV."""
    q, _ = quantize_uv(x, DEFAULT_SCALE_UV)
    return samples_to_uv(q, DEFAULT_SCALE_UV)


@pytest.fixture(scope="module")
def cortex():
    return VirtualCortex(seed=0)


@pytest.fixture(scope="module")
def reference(cortex):
    """Calibration on 3 x 20 s of resting data over 3 days, as quantize would do."""
    recs = [cortex.stream("resting", day=d, session_index=d).read(20_000)[0] for d in range(3)]
    return calibration_stats(recs, sample_rate_hz=FS)


@pytest.fixture(scope="module")
def healthy(cortex):
    """60 s of a psychometric session (stimulation artifacts included) on another day, wired."""
    x, _ = cortex.stream("psychometric", day=1, session_index=7).read(60_000)
    return wire(x)


@pytest.fixture(scope="module")
def healthy_float16(cortex):
    """The same stream as float16 microvolts (the wire's other sample format)."""
    x, _ = cortex.stream("psychometric", day=1, session_index=7).read(60_000)
    return x.astype(np.float16).astype(np.float32)


def feed(health: InputHealth, x: np.ndarray, *, every: int = 16, start_s: float = 0.0):
    """Feed x in 16-sample blocks; assess every `every` blocks. Returns [(t_s, report)]."""
    reports = []
    for i in range(0, x.shape[0], BLOCK):
        health.update(x[i:i + BLOCK])
        if (i // BLOCK) % every == every - 1:
            t = start_s + (i + BLOCK) / FS
            reports.append((t, health.assess(t)))
    return reports


def live_channels(reference):
    return np.setdiff1d(np.arange(reference["n_channels"]), reference["dead_at_calibration"])


# --------------------------------------------------------------------------------------
def test_reference_is_small_versioned_json_that_knows_the_dead_channels(reference, cortex):
    assert reference["format"] == HEALTH_FORMAT and reference["version"] == 1
    assert reference["n_channels"] == 96 and reference["n_samples"] == 60_000
    assert json.loads(json.dumps(reference)) == reference  # JSON-able, no NaN
    assert len(json.dumps(reference)) < 8_000
    for key in ("median_uv", "robust_sd_uv", "step_uv", "mean_step_uv", "repeat_fraction",
                "pinned_min_uv", "pinned_max_uv"):
        assert len(reference["channels"][key]) == 96
    assert reference["dead_at_calibration"] == [int(c) for c in cortex.dead]
    assert HealthThresholds.from_dict(reference["thresholds"]) == HealthThresholds()
    # the reference statistics are what they say: compare with a direct computation
    recs = np.concatenate([cortex.stream("resting", day=d, session_index=d).read(20_000)[0]
                           for d in range(3)])
    med = np.median(recs[::4], axis=0)
    np.testing.assert_allclose(reference["channels"]["median_uv"], med, rtol=2e-3, atol=1e-3)
    steps = np.concatenate([np.abs(np.diff(r, axis=0)) for r in np.split(recs, 3)])
    np.testing.assert_allclose(reference["channels"]["step_uv"], np.median(steps, axis=0), rtol=2e-3)
    # a noisy channel that MUA clipping holds at 0 uV for a while has 0 as its floor
    noisy_zero = [c for c in cortex.noisy if (recs[:, c] == 0).mean() > 0.01]
    assert noisy_zero and all(reference["channels"]["pinned_min_uv"][c] == 0.0 for c in noisy_zero)


def test_memory_bound_thins_evenly_and_keeps_the_statistics(cortex, reference):
    recs = [cortex.stream("resting", day=d, session_index=d).read(20_000)[0] for d in range(3)]
    small = calibration_stats(recs, sample_rate_hz=FS, max_samples=3_000, chunk_samples=4_096)
    assert small["dead_at_calibration"] == reference["dead_at_calibration"]
    live = live_channels(reference)
    for key, rtol in (("median_uv", 0.1), ("step_uv", 0.1)):
        a = np.asarray(small["channels"][key])[live]
        b = np.asarray(reference["channels"][key])[live]
        assert np.median(np.abs(a / b - 1)) < rtol / 2 and np.max(np.abs(a / b - 1)) < rtol * 3
    # sums and counts are exact whatever the chunking
    assert small["channels"]["mean_step_uv"] == reference["channels"]["mean_step_uv"]


@pytest.mark.parametrize("fmt", ["int16", "float16"])
def test_healthy_stream_of_the_same_cortex_never_alarms(reference, healthy, healthy_float16, fmt):
    stream = healthy if fmt == "int16" else healthy_float16
    health = InputHealth(96, reference, FS, rails_uv=wire_rails_uv(1.0 if fmt == "float16" else
                                                                    DEFAULT_SCALE_UV, fmt))
    reports = feed(health, stream)
    assessed = [r for _, r in reports if not r.warming_up]
    assert len(assessed) > 200
    bad = [(t, r.status_text()) for t, r in reports if not r.ok]
    assert not bad, bad[:3]
    assert max(r.ood_score for r in assessed) < HealthThresholds().ood_fraction / 2
    last = assessed[-1]
    assert last.status_text() == "health ok" and last.refuse_reason() is None
    assert last.dead_at_calibration == tuple(reference["dead_at_calibration"])
    assert 0.8 < last.noise_ratio < 1.25


def test_eight_dead_channels_are_reported_within_three_seconds(reference, healthy):
    rng = np.random.default_rng(1)
    killed = np.sort(rng.choice(live_channels(reference), 8, replace=False))
    x = healthy[:15_000].copy()
    t_kill = 8_000
    x[t_kill:, killed] = wire(0.2 + 0.05 * rng.standard_normal((x.shape[0] - t_kill, 8)))
    reports = feed(InputHealth(96, reference, FS), x)
    before = [r for t, r in reports if t <= t_kill / FS and not r.warming_up]
    assert before and all(r.ok for r in before)
    after = [(t, r) for t, r in reports if t > t_kill / FS]
    t_first = next(t for t, r in after if r.dead == tuple(int(c) for c in killed))
    assert t_first - t_kill / FS <= 3.0
    for t, r in after:
        if t >= t_first:  # stays reported, and nothing else is
            assert r.dead == tuple(int(c) for c in killed) and not r.flat and not r.saturated
            # the dead channels count as moved, but 8 of 93 is not a distribution shift
            assert r.ood_score == pytest.approx(8 / 93) and not r.ood
            assert not r.ok and r.refuse_reason().startswith("input unhealthy: 8 dead (ch ")
            assert r.dead_at_calibration == tuple(reference["dead_at_calibration"])
    assert after[-1][1].status_text().startswith("health: 8 dead (ch ")


def test_a_constant_channel_is_flat_and_a_clipped_one_saturated(reference, healthy):
    live = live_channels(reference)
    stuck, clipped = int(live[10]), int(live[40])
    x = healthy[:6_000].copy()
    x[3_000:, stuck] = x[3_000, stuck]
    x[3_000:, clipped] = np.minimum(x[3_000:, clipped], np.percentile(x[3_000:, clipped], 70))
    r = feed(InputHealth(96, reference, FS), x)[-1][1]
    assert r.flat == (stuck,) and r.saturated == (clipped,) and r.dead == ()
    assert not r.ok and "1 flat (ch" in r.refuse_reason() and "1 saturated (ch" in r.refuse_reason()
    j = r.to_json()
    assert j["flat"] == [stuck] and j["saturated"] == [clipped] and j["ok"] is False
    # a staircase that moves only where sub-blocks meet is not flat (steps across blocks
    # count); with 8 levels in the window its top level holds 1/8 of it, hence the override
    health = InputHealth(96, reference, FS, saturated_fraction=0.2)
    stairs = np.repeat(np.arange(x.shape[0] // health.sub_samples + 1, dtype=np.float32),
                       health.sub_samples)[:x.shape[0]]
    x[:, stuck] = 5 + 0.5 * stairs
    r = feed(health, x)[-1][1]
    assert r.flat == () and r.dead == (stuck,)  # its median step is 0


def test_a_channel_at_the_wire_rail_is_saturated(reference, healthy):
    lo, hi = wire_rails_uv(DEFAULT_SCALE_UV)
    assert (lo, hi) == tuple(float(v) for v in wire(np.array([[-1e6, 1e6]], np.float32))[0])
    assert wire_rails_uv(1.0, "float16") == (-65504.0, 65504.0)
    live = live_channels(reference)
    pinned, spiky = int(live[3]), int(live[50])
    x = healthy[:6_000].copy()
    x[3_000:, pinned] = hi
    x[5_000:5_040, spiky] = hi  # 40 samples on the rail: 2% of the last window
    with_rails = feed(InputHealth(96, reference, FS, rails_uv=(lo, hi)), x)[-1][1]
    assert with_rails.saturated == (pinned, spiky) and with_rails.flat == ()
    without = feed(InputHealth(96, reference, FS), x)[-1][1]
    assert without.flat == (pinned,) and without.saturated == ()


def test_gain_change_or_shifted_median_trips_out_of_distribution(reference, healthy):
    t_change = 6_000
    sd = np.asarray(reference["channels"]["robust_sd_uv"], np.float32)
    for name, change, ratio in (("gain x2", lambda y: y * 2, 2.0), ("gain x0.5", lambda y: y * 0.5, 0.5),
                                ("median +12 SD", lambda y: y + 12 * sd, None)):
        x = healthy[:12_000].copy()
        x[t_change:] = change(x[t_change:])
        reports = feed(InputHealth(96, reference, FS), x)
        assert all(not r.ood for t, r in reports if t <= t_change / FS), name
        t_first = next(t for t, r in reports if r.ood)
        assert t_first - t_change / FS <= 3.0, name
        last = reports[-1][1]
        assert last.ood and last.ood_score > 0.9, name
        assert last.refuse_reason().startswith("input unhealthy:") and "OOD" in last.status_text()
        if ratio is not None:
            assert last.noise_ratio == pytest.approx(ratio, rel=0.25), name
            assert (last.noise_up if ratio > 1 else last.noise_down) > 80
        else:
            assert last.level_up > 80


def test_counts_follow_the_window_exactly_whatever_the_block_sizes(reference, healthy):
    """The rule is 'more than half of the window beyond a threshold'; check it against numpy
    on the exact window, fed in random block sizes (staging and ring boundaries)."""
    rng = np.random.default_rng(3)
    x = healthy[:9_000].copy()
    gains = np.exp(rng.uniform(np.log(0.2), np.log(3.0), 96)).astype(np.float32)
    x[5_000:] *= gains  # channels spread across the dead / noise thresholds
    health = InputHealth(96, reference, FS)
    pos = 0
    while pos < x.shape[0]:
        n = int(rng.integers(1, 70))
        health.update(x[pos:pos + n])
        pos += n
    r = health.assess()
    t = health.thresholds
    sub = health.sub_samples
    done = (x.shape[0] // sub) * sub  # complete sub-blocks only
    w = x[done - health.n_slots * sub:done]
    steps = np.abs(np.diff(x[done - health.n_slots * sub - 1:done], axis=0))
    step = np.asarray(reference["channels"]["step_uv"], np.float64)
    live = np.ones(96, bool)
    live[reference["dead_at_calibration"]] = False

    def more_than_half(beyond):
        return (2 * beyond.sum(axis=0) > len(steps)) & live

    dead = more_than_half(steps < (step * t.dead_step_ratio).astype(np.float32))
    up = more_than_half(steps > (step * t.scale_factor).astype(np.float32))
    down = more_than_half(steps < (step / t.scale_factor).astype(np.float32))
    assert r.samples == len(w)
    assert r.dead == tuple(np.flatnonzero(dead)) and len(r.dead) > 3
    assert r.noise_up == int(up.sum()) and r.noise_down == int(down.sum())
    assert 10 < r.noise_up < 80


def test_without_a_reference_dead_flat_and_saturated_still_work(healthy):
    rng = np.random.default_rng(2)
    x = healthy[:6_000].copy()
    x[:, 5] = wire(0.2 + 0.05 * rng.standard_normal(x.shape[0]))
    x[:, 6] = 7.5
    x[:, 7] = np.minimum(x[:, 7], np.percentile(x[:, 7], 60))
    r = feed(InputHealth(96, None, FS), x)[-1][1]
    assert r.flat == (6,) and r.saturated == (7,)
    assert r.dead == (1, 5, 8, 94)  # with the cortex's own dead channels: nothing knew them
    assert r.dead_at_calibration == () and r.ood_score is None and not r.ood and r.noise_ratio is None
    ok = feed(InputHealth(96, None, FS), healthy)
    assert all(r.dead == (1, 8, 94) and not r.flat and not r.saturated
               for _, r in ok if not r.warming_up)
    assert ok[-1][1].status_text().startswith("health: 3 dead (ch 1, 8, 94)")


def test_warm_up_reset_and_bad_input(reference, healthy):
    health = InputHealth(96, reference, FS)
    health.update(healthy[:500])
    r = health.assess(0.5)
    assert r.warming_up and r.ok and r.refuse_reason() is None and r.status_text() == "health warming up"
    health.update(healthy[500:1_500])
    assert not health.assess(1.5).warming_up  # half a window of complete sub-blocks
    health.reset()
    assert health.assess().warming_up
    with pytest.raises(ValueError, match=r"shape \(n, 96\)"):
        health.update(healthy[:16, :95])
    with pytest.raises(ValueError, match="describes 96 channels"):
        InputHealth(64, reference, FS)
    with pytest.raises(ValueError, match="not a phosphene-input-health"):
        InputHealth(96, {"format": "something else"}, FS)
    with pytest.raises(ValueError, match="version 9"):
        InputHealth(96, {**reference, "version": 9}, FS)
    with pytest.raises(ValueError, match="calibration recordings disagree"):
        calibration_stats([healthy[:100], healthy[:100, :10]])
    with pytest.raises(ValueError, match="NaN"):
        bad = healthy[:100].copy()
        bad[50, 3] = np.nan
        calibration_stats([bad])
    # thresholds given explicitly win over the reference's
    assert InputHealth(96, reference, FS, scale_factor=3.0).thresholds.scale_factor == 3.0


def test_report_json_is_small_and_json_able(reference, healthy):
    r = feed(InputHealth(96, reference, FS), healthy[:4_000])[-1][1]
    j = r.to_json()
    assert json.loads(json.dumps(j)) == j and len(json.dumps(j)) < 400
    assert set(j) == {"ok", "warming_up", "samples", "dead", "flat", "saturated", "dead_at_calibration",
                      "moved", "ood", "ood_score", "noise_ratio"}


def test_update_allocates_nothing_after_warm_up(reference, healthy):
    health = InputHealth(96, reference, FS, rails_uv=wire_rails_uv(DEFAULT_SCALE_UV))
    blocks = [np.ascontiguousarray(healthy[i:i + BLOCK]) for i in range(0, 20_000, BLOCK)]
    for b in blocks[:300]:  # past one full window: every slot written once
        health.update(b)
    tracemalloc.start()
    try:
        for b in blocks[300:600]:  # traced from here: counters replaced by new ints, etc.
            health.update(b)
        base = tracemalloc.get_traced_memory()[0]
        for b in blocks[600:900]:
            health.update(b)
        grown = tracemalloc.get_traced_memory()[0] - base
        worst = 0
        for b in blocks[900:]:
            before = tracemalloc.get_traced_memory()[0]
            tracemalloc.reset_peak()
            health.update(b)
            worst = max(worst, tracemalloc.get_traced_memory()[1] - before)
    finally:
        tracemalloc.stop()
    assert grown <= 0, "update() keeps memory that grows with the number of calls"
    assert worst < 4_096, "update() allocates array-sized temporaries (a (96,) row is 384 bytes)"
