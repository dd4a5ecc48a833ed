"""The one signal definition: any chunking gives the same samples."""

from __future__ import annotations

import itertools

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from phosphene.signal import (
    Normaliser,
    NormaliserConfig,
    WindowSpec,
    interpolate_blanked,
    normalise_recording,
)
from phosphene.train.importers.mua import MuaExtractor


def _split_points(n: int, cuts: list[int]) -> list[int]:
    return sorted({0, n, *(c % (n + 1) for c in cuts)})


def _chunked(process, x: np.ndarray, cuts: list[int]) -> np.ndarray:
    points = _split_points(len(x), cuts)
    return np.concatenate([process(x[a:b]) for a, b in itertools.pairwise(points)])


@pytest.fixture(scope="module")
def broadband():
    rng = np.random.default_rng(0)
    return rng.standard_normal((3000, 4)) * 50.0  # 0.1 s at 30 kHz, 4 channels, uV


@settings(max_examples=25, deadline=None)
@given(cuts=st.lists(st.integers(0, 3000), max_size=8))
def test_mua_extraction_is_chunk_invariant(broadband, cuts):
    whole = MuaExtractor(n_channels=4, input_rate_hz=30000).process(broadband)
    ext = MuaExtractor(n_channels=4, input_rate_hz=30000)
    chunked = _chunked(ext.process, broadband, cuts)
    assert whole.shape == (100, 4)  # 30 kHz -> 1 kHz
    np.testing.assert_array_equal(chunked, whole)


def test_mua_extracts_the_spiking_band_envelope():
    fs, n = 30000, 30000
    t = np.arange(n) / fs
    lfp = 200.0 * np.sin(2 * np.pi * 10 * t)  # slow LFP, outside the band
    spikes = np.where(t > 0.5, 20.0 * np.sin(2 * np.pi * 1500 * t), 0.0)  # in-band burst
    x = np.stack([lfp + spikes, lfp], axis=1)
    mua = MuaExtractor(n_channels=2, input_rate_hz=fs,
                       config=__import__("phosphene.signal", fromlist=["MuaConfig"]).MuaConfig(
                           common_average=False)).process(x)
    quiet, burst = mua[200:450, 0].mean(), mua[700:, 0].mean()
    assert burst > 10 * quiet  # the envelope tracks in-band power, not the LFP
    assert mua[700:, 1].mean() < 0.1 * burst


@pytest.mark.parametrize("rate", [30000.0, 2000.0])
def test_mua_accepts_integer_multiples_of_1khz(rate):
    ext = MuaExtractor(n_channels=2, input_rate_hz=rate)
    out = ext.process(np.ones((int(rate), 2)))
    assert out.shape == (1000, 2)


@pytest.mark.parametrize("rate, message", [(1500.0, "integer multiple"), (1000.0, "integer multiple")])
def test_mua_rejects_rates_it_cannot_pool(rate, message):
    with pytest.raises(ValueError, match=message):
        MuaExtractor(n_channels=2, input_rate_hz=rate)


@pytest.fixture(scope="module")
def mua_recording():
    rng = np.random.default_rng(1)
    x = 8.0 + rng.standard_normal((6000, 5)).astype(np.float32)
    x[:, 2] *= 3.0
    x[3000:3170] += 100.0  # an artifact-like burst
    return x


@pytest.mark.parametrize("method", ["robust", "zscore"])
@settings(max_examples=20, deadline=None)
@given(cuts=st.lists(st.integers(0, 6000), max_size=10))
def test_normaliser_is_chunk_invariant_to_the_byte(mua_recording, method, cuts):
    cfg = NormaliserConfig(method=method, window_s=2.0, refresh_s=0.5)
    whole = Normaliser(5, cfg).process(mua_recording)
    chunked = _chunked(Normaliser(5, cfg).process, mua_recording, cuts)
    np.testing.assert_array_equal(chunked, whole)  # NaN positions equal too


def test_normaliser_frame_by_frame_equals_offline(mua_recording):
    cfg = NormaliserConfig(window_s=2.0, refresh_s=0.5)
    offline = normalise_recording(mua_recording, cfg, chunk_samples=4096)
    norm = Normaliser(5, cfg)
    online = np.concatenate([norm.process(mua_recording[i:i + 16])
                             for i in range(0, len(mua_recording), 16)])
    np.testing.assert_array_equal(online, offline)


def test_normaliser_output_statistics(mua_recording):
    cfg = NormaliserConfig(window_s=2.0, refresh_s=0.5)
    out = Normaliser(5, cfg).process(mua_recording)
    assert np.isnan(out[: cfg.warmup_samples]).all()  # no statistics yet: explicit, not zero
    steady = out[2500:3000]
    assert np.all(np.abs(np.median(steady, axis=0)) < 0.3)
    assert np.all(np.abs(np.std(steady, axis=0) - 1.0) < 0.2)  # channel 2's 3x gain removed
    assert np.abs(out[cfg.warmup_samples:]).max() <= cfg.clip


def test_normaliser_uses_only_the_past():
    rng = np.random.default_rng(2)
    x = rng.standard_normal((4000, 3)).astype(np.float32) + 5
    y = x.copy()
    y[3000:] += 50.0  # a change in the future
    cfg = NormaliserConfig(window_s=2.0, refresh_s=0.5)
    a, b = Normaliser(3, cfg).process(x), Normaliser(3, cfg).process(y)
    np.testing.assert_array_equal(a[:3000], b[:3000])


def test_dead_channel_does_not_blow_up():
    x = np.zeros((3000, 2), dtype=np.float32)
    x[:, 1] = np.random.default_rng(3).standard_normal(3000)
    out = Normaliser(2, NormaliserConfig(window_s=1.0, refresh_s=0.5)).process(x)
    assert np.all(out[500:, 0] == 0.0)


def test_window_spec_matches_the_paper():
    spec = WindowSpec()
    assert spec.n_patches == 8 and spec.window_ms == 128.0
    assert spec.triggered_window(1000) == (1170, 1298)
    with pytest.raises(ValueError, match="whole number of"):
        WindowSpec(window_samples=100, patch_samples=16)


def test_interpolate_blanked_draws_a_line():
    x = np.arange(10, dtype=float)[:, None] ** 2
    y = interpolate_blanked(x, [(3, 6)])
    np.testing.assert_allclose(y[3:6, 0], [4 + (36 - 4) * k / 4 for k in (1, 2, 3)])
    np.testing.assert_array_equal(y[:3], x[:3])


def test_normaliser_config_rejects_bad_values():
    with pytest.raises(ValueError, match="method"):
        NormaliserConfig(method="mean")
    with pytest.raises(ValueError, match="positive"):
        NormaliserConfig(window_s=-1)


# --------------------------------------------------------------------------------------
# Binned counts: the Poisson scale floor (issue 16)
# --------------------------------------------------------------------------------------
def _held_poisson(rates_hz, *, bin_ms=50, seconds=60.0, seed=0) -> np.ndarray:
    """Counts at known rates as the importer stores them: count / bin width held at 1 kHz."""
    rng = np.random.default_rng(seed)
    n_bins = int(seconds * 1000 / bin_ms)
    counts = rng.poisson(np.asarray(rates_hz)[None, :] * bin_ms / 1000.0, (n_bins, len(rates_hz)))
    return np.repeat(counts * (1000.0 / bin_ms), bin_ms, axis=0).astype(np.float32)


def test_default_normaliser_dict_is_unchanged():
    """MUA configs keep the dict (so cache keys, checkpoints and bundles) they always had."""
    import hashlib
    import json

    d = NormaliserConfig().to_dict()
    assert d == {"method": "robust", "window_s": 10.0, "refresh_s": 1.0, "decimate": 4,
                 "clip": 8.0, "floor_uv": 0.01, "sample_rate_hz": 1000.0}
    key = hashlib.sha256(json.dumps(d, sort_keys=True).encode()).hexdigest()[:12]
    assert key == "d55f478fad62"  # Dataset.normalised's cache directory before issue 16
    assert NormaliserConfig.from_dict(d) == NormaliserConfig()


def test_count_normaliser_is_recorded_and_round_trips():
    cfg = NormaliserConfig.for_counts(50)
    d = cfg.to_dict()
    assert d["scale_floor"] == "poisson" and d["bin_ms"] == 50.0
    assert NormaliserConfig.from_dict(d) == cfg
    assert "Poisson" in cfg.describe()
    with pytest.raises(ValueError, match="bin width"):
        NormaliserConfig(scale_floor="poisson")
    with pytest.raises(ValueError, match="scale_floor must be one of"):
        NormaliserConfig(scale_floor="sqrt")


def test_poisson_floor_is_one_count_or_the_poisson_sd():
    from phosphene.signal import scale_floor

    cfg = NormaliserConfig.for_counts(50)  # one count per 50 ms bin = 20 spikes/s
    center = np.array([0.0, 10.0, 20.0, 100.0, 2000.0], np.float32)  # spikes/s
    floor = scale_floor(center, cfg)
    # 0 and 0.5 counts -> one count; 1 count -> one; 5 counts -> sqrt 5; 100 -> 10 counts
    assert np.allclose(floor, [20.0, 20.0, 20.0, np.sqrt(5.0) * 20.0, 10.0 * 20.0])
    assert scale_floor(center, NormaliserConfig()) == 0.01


def test_poisson_floor_keeps_sparse_counts_off_the_clip():
    rates = np.array([0.2, 0.5, 1.0, 2.0, 5.0, 10.0, 20.0, 40.0])  # spikes/s
    x = _held_poisson(rates, seconds=120.0)
    mua = normalise_recording(x, NormaliserConfig())[1000:]
    counts = normalise_recording(x, NormaliserConfig.for_counts(50))[1000:]
    assert (np.abs(mua) >= 8.0).mean() > 0.05  # the MUA floor: a single spike is the clip
    assert (np.abs(counts) >= 8.0).mean() < 1e-3
    # a sparse unit (mean ~0.01 counts a bin, SD under one count): one spike in a bin is
    # about one unit above its mean, two about two; never the clip
    sparse = counts[:, 0]
    assert np.allclose(sparse, np.round(sparse), atol=0.05) and sparse.max() <= 3.0
    # the robust statistics with the same floor: a silent window is exactly 0, a spike 1
    robust = normalise_recording(x, NormaliserConfig.for_counts(50, method="robust"))[1000:, 0]
    assert set(np.unique(robust).tolist()) <= {0.0, 1.0, 2.0, 3.0}


@settings(deadline=None, max_examples=10)
@given(cuts=st.lists(st.integers(1, 3000), min_size=1, max_size=6))
def test_count_normaliser_is_chunk_invariant(cuts):
    x = _held_poisson([0.3, 3.0, 30.0], seconds=8.0, seed=5)
    cfg = NormaliserConfig.for_counts(50, window_s=2.0, refresh_s=0.5)
    whole = Normaliser(3, cfg).process(x)
    norm, parts, pos = Normaliser(3, cfg), [], 0
    for c in [*sorted(set(cuts)), len(x)]:
        if c > pos:
            parts.append(norm.process(x[pos:c]))
            pos = c
    assert np.array_equal(np.concatenate(parts), whole, equal_nan=True)
