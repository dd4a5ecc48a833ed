"""Small recordings the io tests write themselves: broadband int16 and the expected MUA."""

from __future__ import annotations

import numpy as np

from phosphene.signal import interpolate_blanked
from phosphene.train.importers.mua import MuaExtractor

UV_PER_BIT = 0.25  # what nsx_writer.write_nsx stores by default


def make_broadband(n_samples: int, n_channels: int, *, rate_hz: float = 30_000.0, seed: int = 0,
                   onsets_s: tuple[float, ...] = (), artifact_uv: float = 3000.0) -> np.ndarray:
    """(T, C) int16 broadband: noise whose amplitude drifts per channel, plus a big
    300 Hz square-wave artifact for 20 ms after each onset (what blanking must remove)."""
    rng = np.random.default_rng(seed)
    t = np.arange(n_samples) / rate_hz
    envelope = 30.0 + 20.0 * np.sin(2 * np.pi * (0.5 + 0.1 * np.arange(n_channels)) * t[:, None]) ** 2
    x = rng.standard_normal((n_samples, n_channels)) * envelope
    scale = np.linspace(0.2, 1.0, n_channels)  # differs per channel, so CAR cannot cancel it
    pulse = np.sign(np.sin(2 * np.pi * 300.0 * np.arange(int(0.02 * rate_hz)) / rate_hz))
    for onset in onsets_s:
        a = int(onset * rate_hz)
        x[a:a + len(pulse)] += artifact_uv * pulse[:, None] * scale
    return np.clip(np.round(x / UV_PER_BIT), -32000, 32000).astype(np.int16)


def expected_mua(samples_int16: np.ndarray, rate_hz: float, onsets_s=(), blank_ms: float = 167.0,
                 t0_s: float = 0.0) -> np.ndarray:
    """The signal definition run over the whole recording in one call (the reference)."""
    x = samples_int16.astype(np.float64) * UV_PER_BIT
    blank = round(blank_ms * rate_hz / 1000)
    intervals = [(round((o - t0_s) * rate_hz), round((o - t0_s) * rate_hz) + blank)
                 for o in onsets_s]
    if intervals and blank:
        x = interpolate_blanked(x, intervals)
    return MuaExtractor(n_channels=x.shape[1], input_rate_hz=rate_hz).process(x)
