"""The one signal definition: any chunking gives the same samples."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from phosphene.signal import (MuaExtractor, Normaliser, NormaliserConfig, WindowSpec,
                              interpolate_blanked, normalise_recording)


def _split_points(n: int, cuts: list[int]) -> list[int]:
    return sorted({0, n, *(c % (n + 1) for c in cuts)})


def _chunked(process, x: np.ndarray, cuts: list[int]) -> np.ndarray:
    points = _split_points(len(x), cuts)
    return np.concatenate([process(x[a:b]) for a, b in zip(points[:-1], points[1:])])


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
