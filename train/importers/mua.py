"""Broadband -> MUA at 1 kHz (paper Table 3, steps 1-6), for the importers.

The parameters (MuaConfig) are part of the one signal definition in phosphene.signal;
the extractor needs scipy's filter design and sosfilt, so it lives here, on the
workstation side: the edge receives MUA and never imports scipy.
"""

from __future__ import annotations

import numpy as np

from phosphene.errors import ConfigError
from phosphene.signal import MuaConfig

__all__ = ["MuaExtractor"]


class MuaExtractor:
    """Causal broadband -> MUA at 1 kHz with carried filter and pooling state.

    process(x: (n, C) broadband in uV) -> (m, C) MUA in uV, m = samples completed so far.
    The input rate must be an integer multiple of the output rate (e.g. 30 kHz, 10 kHz,
    2 kHz); the upper band edge is lowered to 0.45 x the input rate when needed.
    """

    def __init__(self, *, n_channels: int, input_rate_hz: float, config: MuaConfig = MuaConfig()):
        try:
            from scipy import signal as sps
        except ImportError as exc:  # pragma: no cover - the workstation extras include scipy
            raise ImportError("broadband MUA extraction needs scipy: pip install 'phosphene[io]'") from exc
        if n_channels <= 0:
            raise ConfigError(f"channel count must be positive, got {n_channels}")
        ratio = input_rate_hz / config.output_rate_hz
        if ratio < 2 or abs(ratio - round(ratio)) > 1e-9:
            raise ConfigError(
                f"input rate {input_rate_hz:g} Hz cannot be average-pooled to "
                f"{config.output_rate_hz:g} Hz: it must be an integer multiple of at least 2x "
                "(e.g. 30000, 10000 or 2000 Hz)")
        low, high = config.band_hz
        high = min(high, 0.45 * input_rate_hz)
        if high <= low:
            raise ConfigError(f"input rate {input_rate_hz:g} Hz is too low for the "
                              f"{low:g} Hz spiking band")
        self.config = config
        self.n_channels = n_channels
        self.input_rate_hz = float(input_rate_hz)
        self.pool = round(ratio)
        self.band_sos = sps.butter(config.band_order, [low, high], btype="bandpass",
                                   fs=input_rate_hz, output="sos")
        self.low_sos = sps.butter(config.lowpass_order, config.lowpass_hz, btype="lowpass",
                                  fs=input_rate_hz, output="sos")
        self._sosfilt = sps.sosfilt
        self.reset()

    def reset(self) -> None:
        C = self.n_channels
        self._band_zi = np.zeros((self.band_sos.shape[0], 2, C))
        self._low_zi = np.zeros((self.low_sos.shape[0], 2, C))
        self._carry = np.zeros((0, C))

    def process(self, x: np.ndarray) -> np.ndarray:
        x = np.asarray(x, dtype=np.float64)
        if x.ndim != 2 or x.shape[1] != self.n_channels:
            raise ValueError(f"expected broadband of shape (n, {self.n_channels}), got {x.shape}")
        if x.shape[0] == 0:
            return np.zeros((0, self.n_channels), dtype=np.float32)
        if self.config.common_average:
            x = x - x.mean(axis=1, keepdims=True)
        x = np.clip(x, -self.config.clip_uv, self.config.clip_uv)
        x, self._band_zi = self._sosfilt(self.band_sos, x, axis=0, zi=self._band_zi)
        x = np.abs(x)
        x, self._low_zi = self._sosfilt(self.low_sos, x, axis=0, zi=self._low_zi)
        x = np.concatenate([self._carry, x], axis=0)
        n_out = x.shape[0] // self.pool
        self._carry = x[n_out * self.pool:]
        pooled = x[: n_out * self.pool].reshape(n_out, self.pool, self.n_channels).mean(axis=1)
        return pooled.astype(np.float32)
