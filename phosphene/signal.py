"""The one signal definition: MUA parameters, normalisation and window timing.

Training, import and the bedside runtime all call this module, so the decoder never sees
a different input distribution than it was trained on (paper Table 3). Everything here is
causal streaming code with explicit state: feeding a recording in one call or in any
chunking gives the same samples (tests/test_signal.py proves it over random chunkings).

Arrays are (T, C): time first, channels second, so a window is a contiguous block of rows.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field, replace

import numpy as np

from phosphene.errors import ConfigError

__all__ = [
    "PRE_STIMULUS",
    "SCALE_FLOORS",
    "MuaConfig",
    "Normaliser",
    "NormaliserConfig",
    "WindowSpec",
    "interpolate_blanked",
    "inverse_scale",
    "normalise_recording",
    "scale_floor",
    "task_window",
]

MUA_RATE_HZ = 1000.0  # every dataset, model and wire frame runs at this rate
SCALE_FLOORS = ("constant", "poisson")  # NormaliserConfig.scale_floor: MUA, binned counts


@dataclass(frozen=True)
class WindowSpec:
    """Window timing, stored in every checkpoint and bundle (never a literal in a runtime).

    The paper decodes 128 ms of 1 kHz MUA starting 170 ms after stimulation onset, cut
    into 16-sample patches.
    """

    sample_rate_hz: float = MUA_RATE_HZ  # MUA rate after extraction
    window_samples: int = 128  # samples per decoded window (128 ms at 1 kHz)
    patch_samples: int = 16  # samples per patch: the model's token and continuous cadence
    # triggered window start relative to stimulation onset: 170 ms after it (the artifact has
    # ended); negative for a pre-stimulus window (-window_ms: the window ends at onset)
    offset_ms: float = 170.0

    def __post_init__(self) -> None:
        if self.sample_rate_hz <= 0:
            raise ConfigError(f"sample rate must be positive, got {self.sample_rate_hz}")
        if self.window_samples <= 0 or self.patch_samples <= 0:
            raise ConfigError("window and patch lengths must be positive sample counts")
        if self.window_samples % self.patch_samples:
            raise ConfigError(f"window ({self.window_samples} samples) must be a whole number of "
                              f"patches ({self.patch_samples} samples)")
        if not math.isfinite(self.offset_ms):
            raise ConfigError(f"window offset must be a finite number of ms, got {self.offset_ms}")

    @property
    def n_patches(self) -> int:
        return self.window_samples // self.patch_samples

    @property
    def offset_samples(self) -> int:
        return round(self.offset_ms * self.sample_rate_hz / 1000.0)

    @property
    def window_ms(self) -> float:
        return self.window_samples * 1000.0 / self.sample_rate_hz

    def triggered_window(self, onset_sample: int) -> tuple[int, int]:
        """[start, stop) sample indices of the window decoded for a stimulation at onset."""
        start = int(onset_sample) + self.offset_samples
        return start, start + self.window_samples

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> WindowSpec:
        return cls(**{k: d[k] for k in ("sample_rate_hz", "window_samples", "patch_samples",
                                        "offset_ms") if k in d})


PRE_STIMULUS = "_pre"  # task-name suffix: the window that ends at stimulation onset


def task_window(task: str, spec: WindowSpec,
                offsets_ms: dict[str, float] | None = None) -> tuple[str, WindowSpec]:
    """(trial kind, window) of a decoded task.

    A task is named after the trials whose labels it learns. "threshold" reads `spec` (the
    dataset's window, after onset), or the offset its dataset records for that task
    (`offsets_ms`, set per task on import); "threshold_pre" reads the window of the same
    length that ends at onset: the cortical state before stimulation, from which a closed
    loop predicts whether a stimulation delivered now would be perceived. Probes record the
    offset they were fitted on and bundles carry it, so the edge decodes the same window.
    """
    if task.endswith(PRE_STIMULUS):
        return task[:-len(PRE_STIMULUS)], replace(spec, offset_ms=-spec.window_ms)
    if offsets_ms and task in offsets_ms:
        return task, replace(spec, offset_ms=float(offsets_ms[task]))
    return task, spec


# --------------------------------------------------------------------------------------
# Broadband -> MUA: the parameters (the extractor itself needs scipy and lives with the
# importers, phosphene.train.importers.mua, so the edge path never imports scipy)
# --------------------------------------------------------------------------------------
@dataclass(frozen=True)
class MuaConfig:
    """Paper Table 3, steps 1-6."""

    clip_uv: float = 5000.0  # clip broadband after common average reference
    band_hz: tuple[float, float] = (500.0, 5000.0)  # spiking band
    band_order: int = 2  # Butterworth order per band edge (4th-order band-pass)
    lowpass_hz: float = 200.0  # envelope low-pass after rectification
    lowpass_order: int = 4
    output_rate_hz: float = MUA_RATE_HZ
    common_average: bool = True


def interpolate_blanked(x: np.ndarray, intervals: list[tuple[int, int]]) -> np.ndarray:
    """Replace samples in each [start, stop) by a line between its neighbours (paper Table 3).

    Offline use on stimulation recordings, before the band-pass, so the artifact does not
    ring through the filters. x: (T, C); returns a copy.
    """
    out = np.array(x, dtype=np.float64, copy=True)
    T = out.shape[0]
    for start, stop in intervals:
        start, stop = max(0, int(start)), min(T, int(stop))
        if stop <= start:
            continue
        left = out[start - 1] if start > 0 else out[stop] if stop < T else np.zeros(out.shape[1])
        right = out[stop] if stop < T else left
        frac = (np.arange(1, stop - start + 1) / (stop - start + 1))[:, None]
        out[start:stop] = left + (right - left) * frac
    return out


# --------------------------------------------------------------------------------------
# Normalisation (numpy only: runs on the bedside board)
# --------------------------------------------------------------------------------------
@dataclass(frozen=True)
class NormaliserConfig:
    """Rolling per-channel normalisation over a trailing window.

    Statistics are recomputed every `refresh_s` at absolute sample-index boundaries from
    the trailing `window_s` of input, and applied to the samples that follow. That makes
    the output a pure function of the recording (any chunking gives the same bytes) and
    costs the bedside board one statistics pass per refresh, not per sample.
    """

    method: str = "robust"  # "robust": median / (1.4826 MAD), paper's stim-data choice; "zscore": mean / std
    window_s: float = 10.0  # trailing window for the statistics (paper: 10 s)
    refresh_s: float = 1.0  # how often the statistics are recomputed
    decimate: int = 4  # statistics use every k-th sample (MUA is low-passed at 200 Hz)
    clip: float = 8.0  # output clipped to +/- this many robust SDs (bounds the int8 range)
    floor_uv: float = 0.01  # smallest scale, so a dead channel does not blow up
    sample_rate_hz: float = MUA_RATE_HZ
    # How the scale is floored (`scale_floor()`): "constant" (MUA): scale >= floor_uv.
    # "poisson" (binned spike counts, held at 1 kHz as a rate in spikes/s): the scale is at
    # least the Poisson SD of the channel's centre count, and never under one count per bin:
    # scale >= sqrt(max(center * w, 1)) / w spikes/s for bins of w = bin_ms / 1000 s. A
    # sparse unit whose spread is 0 then moves one unit per spike instead of jumping to the
    # clip. Binned-count datasets use it with the z-score method (`for_counts`).
    scale_floor: str = "constant"
    bin_ms: float = 0.0  # bin width of the counts (scale_floor "poisson" only)

    def __post_init__(self) -> None:
        if self.method not in ("robust", "zscore"):
            raise ConfigError(f"normaliser method must be 'robust' or 'zscore', got {self.method!r}")
        if self.scale_floor not in SCALE_FLOORS:
            raise ConfigError(f"normaliser scale_floor must be one of {', '.join(SCALE_FLOORS)}, "
                              f"got {self.scale_floor!r}")
        if self.scale_floor == "poisson" and not (self.bin_ms > 0 and np.isfinite(self.bin_ms)):
            raise ConfigError(f"the 'poisson' scale floor needs the counts' bin width "
                              f"(bin_ms > 0), got {self.bin_ms!r}")
        if self.window_s <= 0 or self.refresh_s <= 0:
            raise ConfigError("normaliser window and refresh must be positive seconds")
        if self.decimate < 1:
            raise ConfigError("decimate must be >= 1")
        if self.window_samples % self.decimate or self.refresh_samples % self.decimate:
            raise ConfigError("window and refresh must be whole multiples of `decimate` samples")
        if not (np.isfinite(self.clip) and self.clip > 0):
            raise ConfigError(f"normaliser clip must be a positive number of SDs, got {self.clip!r}")
        if not (np.isfinite(self.floor_uv) and self.floor_uv >= 0):
            raise ConfigError(f"normaliser floor_uv must be a finite number >= 0, got {self.floor_uv!r}")

    @property
    def window_samples(self) -> int:
        return round(self.window_s * self.sample_rate_hz)

    @property
    def refresh_samples(self) -> int:
        return round(self.refresh_s * self.sample_rate_hz)

    @property
    def warmup_samples(self) -> int:
        """Samples before the first statistics exist (output is NaN until then)."""
        return self.refresh_samples

    def to_dict(self) -> dict:
        d = asdict(self)
        if self.scale_floor == "constant":
            # a MUA config keeps exactly the dict it always had: cache keys, checkpoints and
            # bundles written before the count floor existed stay valid byte for byte
            del d["scale_floor"], d["bin_ms"]
        return d

    def describe(self) -> str:
        """One line for logs: method, window, clip and the scale floor."""
        floor = (f"floor {self.floor_uv:g}" if self.scale_floor == "constant" else
                 f"Poisson floor for {self.bin_ms:g} ms bins")
        return (f"{self.method}, {self.window_s:g} s window, refresh {self.refresh_s:g} s, "
                f"clip {self.clip:g}, {floor}")

    @classmethod
    def for_counts(cls, bin_ms: float, **overrides) -> NormaliserConfig:
        """The normaliser of binned spike counts of `bin_ms` (the importers record it).

        Rolling mean / SD (method "zscore") with the Poisson scale floor: on counts the
        median and MAD move in whole counts from one refresh to the next, and a unit whose
        MAD is 0 has no scale at all. On Poisson counts with known rates (bench/
        bench_binned_counts.py, docs/dataset.md) this leaves no value at the clip and a
        raw-window probe within a CI of a plain z-score of the session; median / MAD with
        the same floor also leaves none at the clip but scores 3.6 points below it.
        """
        return cls(**{"method": "zscore", "scale_floor": "poisson", "bin_ms": float(bin_ms),
                      **overrides})

    @classmethod
    def from_dict(cls, d: dict) -> NormaliserConfig:
        known = {f for f in cls.__dataclass_fields__}
        return cls(**{k: v for k, v in d.items() if k in known})


def scale_floor(center: np.ndarray, config: NormaliserConfig) -> np.ndarray | float:
    """The smallest scale each channel may take, given its centre (see NormaliserConfig).

    "constant": config.floor_uv. "poisson": sqrt(max(center * w, 1)) / w per channel
    (float64), w = bin_ms / 1000, i.e. the Poisson SD of the centre count but at least one
    count per bin, in the data's units (spikes/s); never below floor_uv either.
    The core Normaliser and the edge's EdgeNormaliser both call this (through
    `inverse_scale`), so they floor identically.
    """
    if config.scale_floor == "constant":
        return config.floor_uv
    w = config.bin_ms / 1000.0
    counts = np.asarray(center, dtype=np.float64) * w
    return np.maximum(np.sqrt(np.maximum(counts, 1.0)) / w, config.floor_uv)


def inverse_scale(scale: np.ndarray, center: np.ndarray, config: NormaliserConfig) -> np.ndarray:
    """float32 1 / max(scale, scale_floor(center)): the factor a refresh applies per channel."""
    return (1.0 / np.maximum(scale, scale_floor(center, config))).astype(np.float32)


@dataclass
class Normaliser:
    """Streaming normaliser with explicit state.

    process(x: (n, C) MUA in uV) -> (n, C) float32 normalised MUA; NaN during warm-up
    (the first `refresh_s`), which the edge reports as "warming up" and training skips.
    """

    n_channels: int
    config: NormaliserConfig = field(default_factory=NormaliserConfig)

    def __post_init__(self) -> None:
        if self.n_channels <= 0:
            raise ConfigError(f"channel count must be positive, got {self.n_channels}")
        self.reset()

    def reset(self) -> None:
        self.samples_seen = 0
        self._ring = np.zeros((self.config.window_samples, self.n_channels), dtype=np.float32)
        self.center = np.full(self.n_channels, np.nan, dtype=np.float32)
        self.inv_scale = np.full(self.n_channels, np.nan, dtype=np.float32)

    @property
    def ready(self) -> bool:
        return self.samples_seen >= self.config.warmup_samples

    def _refresh(self) -> None:
        W, k = self.config.window_samples, self.config.decimate
        filled = min(self.samples_seen, W)
        data = self._ring[:filled:k]  # ring slots are aligned to absolute sample index
        if self.config.method == "robust":
            center = np.median(data, axis=0)
            scale = 1.4826 * np.median(np.abs(data - center), axis=0)
        else:
            center = data.mean(axis=0, dtype=np.float64)
            scale = data.std(axis=0, dtype=np.float64)
        self.center = center.astype(np.float32)
        self.inv_scale = inverse_scale(scale, self.center, self.config)

    def process(self, x: np.ndarray) -> np.ndarray:
        x = np.asarray(x, dtype=np.float32)
        if x.ndim != 2 or x.shape[1] != self.n_channels:
            raise ConfigError(f"expected MUA of shape (n, {self.n_channels}), got {x.shape}")
        n = x.shape[0]
        out = np.empty_like(x)
        R, W, clip = self.config.refresh_samples, self.config.window_samples, self.config.clip
        pos = 0
        while pos < n:
            t = self.samples_seen
            if t > 0 and t % R == 0:
                self._refresh()
            take = min(n - pos, (t // R + 1) * R - t)
            seg = x[pos:pos + take]
            np.multiply(seg - self.center, self.inv_scale, out=out[pos:pos + take])
            slot = t % W  # take <= R <= W, so at most one wrap
            first = min(take, W - slot)
            self._ring[slot:slot + first] = seg[:first]
            if first < take:
                self._ring[: take - first] = seg[first:]
            self.samples_seen += take
            pos += take
        np.clip(out, -clip, clip, out=out)  # NaN stays NaN through clip
        return out


def normalise_recording(x: np.ndarray, config: NormaliserConfig = NormaliserConfig(),
                        *, chunk_samples: int = 65536, out: np.ndarray | None = None) -> np.ndarray:
    """Run the streaming normaliser over a whole (T, C) recording, chunk by chunk.

    The same code path the edge runs frame by frame; `out` may be a memory map.
    """
    T, C = x.shape
    norm = Normaliser(C, config)
    if out is None:
        out = np.empty((T, C), dtype=np.float32)
    for start in range(0, T, chunk_samples):
        out[start:start + chunk_samples] = norm.process(np.asarray(x[start:start + chunk_samples]))
    return out
