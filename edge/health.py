"""Input health: is the raw stream still the signal the bundle was calibrated on?

Map: calibration_stats (offline, on the calibration recordings: per-channel reference
statistics, stored in the bundle manifest under "input_health") -> InputHealth.update
(raw uV blocks, O(n x C), no sorting, nothing allocated that grows) -> InputHealth.assess
(idle time: per-channel classes and an out-of-distribution score) -> HealthReport
(ok, to_json, status_text, refuse_reason).

Everything is measured on raw microvolts, before the normaliser: the normaliser rescales
each channel, so after it a dead channel or a gain change is invisible.

Statistics (docs/input-health.md gives the reasoning and the measured margins):

  step        |x[t] - x[t-1]|, the sample-to-sample step. Its median is the channel's noise
              floor: it ignores slow level changes (cortical state, drift across days) and
              moves with the amplifier gain and with the electrode dying.
  level       the channel's median in uV.

The stream side never sorts. Each test is "more than half of the window's steps (or
samples) lie beyond a threshold", which is exactly "the window's median lies beyond it",
so a count per channel and per fixed sub-block of samples is all that is kept, and a
count moves by at most the share of contaminated samples (stimulation artifacts cannot
push a median further than their share of the window).

Classes (channels are 0-based columns of the sample arrays):

  dead                  median step < dead_step_ratio x the reference median step
                        (no reference: < dead_floor_uv)
  flat                  every step in the window is exactly 0 (a stuck ADC)
  saturated             >= saturated_fraction of the window's samples sit on one extreme
                        value (its max or min), or >= rail_fraction on the wire's rails; an
                        extreme the channel already sat on during calibration (a floor such
                        as MUA clipped at 0 uV; without a reference, 0 uV) is not saturation
  dead_at_calibration   dead in the calibration data: reported apart, never a new fault

Out of distribution (needs a reference): the OOD score is the share of the channels live
at calibration that moved, a channel moving when its median step left
[ref / scale_factor, ref x scale_factor], its median left ref median +- level_sds x ref
robust SD, or it is dead, flat or saturated now. The input is out of distribution when
the score >= ood_fraction.

Imports numpy and the standard library only.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import asdict, dataclass, fields

import numpy as np

from phosphene.errors import ConfigError, InputError

__all__ = [
    "HEALTH_FORMAT",
    "HEALTH_VERSION",
    "HealthReport",
    "HealthThresholds",
    "InputHealth",
    "calibration_stats",
    "wire_rails_uv",
]

HEALTH_FORMAT = "phosphene-input-health"
HEALTH_VERSION = 1
_MAD_TO_SD = 1.4826


@dataclass(frozen=True)
class HealthThresholds:
    """Window and classification thresholds; stored in the reference so a bundle carries them."""

    window_s: float = 2.0  # statistics cover the last window_s of samples (in whole sub-blocks)
    sub_block_s: float = 0.25  # counts are kept per sub-block: the report lags by at most this
    min_fill: float = 0.5  # classify once the window holds this share of window_s
    dead_step_ratio: float = 1.0 / 3.0  # dead: median step below this x the reference's
    dead_floor_uv: float = 0.1  # dead without a reference (and at calibration): median step below
    scale_factor: float = 1.5  # OOD: median step moved by more than this factor either way
    level_sds: float = 10.0  # OOD: median moved by more than this many reference robust SDs
    saturated_fraction: float = 0.1  # saturated: share of samples on one extreme value
    rail_fraction: float = 0.01  # saturated: share of samples on the wire's rails
    pinned_fraction: float = 1e-4  # calibration share on an extreme that makes it a floor
    ood_fraction: float = 0.25  # OOD flag: share of calibration-live channels that moved
    refuse_faulty: int = 1  # refuse_reason: this many new dead/flat/saturated channels

    def __post_init__(self) -> None:
        if not (self.window_s > 0 and self.sub_block_s > 0 and self.sub_block_s <= self.window_s):
            raise ConfigError("health window_s and sub_block_s must be > 0, sub_block_s <= window_s")
        if not 0 < self.min_fill <= 1:
            raise ConfigError(f"min_fill must be in (0, 1], got {self.min_fill}")
        if not (0 < self.dead_step_ratio < 1 and self.scale_factor > 1 and self.level_sds > 0):
            raise ConfigError("need 0 < dead_step_ratio < 1, scale_factor > 1 and level_sds > 0")
        for name in ("saturated_fraction", "rail_fraction", "ood_fraction"):
            if not 0 < getattr(self, name) <= 1:
                raise ConfigError(f"{name} must be in (0, 1], got {getattr(self, name)}")
        if self.refuse_faulty < 1:
            raise ConfigError(f"refuse_faulty must be >= 1, got {self.refuse_faulty}")

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> HealthThresholds:
        known = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in d.items() if k in known})


def wire_rails_uv(scale_uv: float, sample_format: str = "int16") -> tuple[float, float]:
    """The values a saturated wire sample decodes to: int16 at scale_uv uV per LSB, or
    float16 (saturated to +-65504) times scale_uv; as float32, like the decoder's output."""
    s = np.float32(scale_uv)
    if sample_format == "int16":
        lo, hi = np.float32(-32768), np.float32(32767)
    elif sample_format == "float16":
        hi = np.float32(np.finfo(np.float16).max)
        lo = -hi
    else:
        raise ConfigError(f"sample_format must be int16 or float16, got {sample_format!r}")
    return float(lo * s), float(hi * s)


# --------------------------------------------------------------------------------------
# Calibration: reference statistics of the raw input the bundle was calibrated on
# --------------------------------------------------------------------------------------
class _Pool:
    """An evenly thinned subsample of rows, bounded to max_rows (deterministic)."""

    def __init__(self, max_rows: int, stride: int):
        self.max_rows, self.stride = int(max_rows), int(stride)
        self.pos = 0  # rows offered so far
        self.parts: list[np.ndarray] = []
        self.rows = 0

    def add(self, x: np.ndarray) -> None:
        first = (-self.pos) % self.stride
        take = np.ascontiguousarray(x[first::self.stride], dtype=np.float32)
        self.pos += x.shape[0]
        if take.shape[0]:
            self.parts.append(take)
            self.rows += take.shape[0]
        while self.rows > self.max_rows:  # keep every other kept row (global index % 2 stride == 0)
            kept, offset = [], 0
            for p in self.parts:
                sel = p[(offset % 2)::2]
                offset += p.shape[0]
                if sel.shape[0]:
                    kept.append(sel)
            self.parts = kept
            self.rows = sum(p.shape[0] for p in kept)
            self.stride *= 2

    def array(self, n_channels: int) -> np.ndarray:
        return np.concatenate(self.parts) if self.parts else np.zeros((0, n_channels), np.float32)


def _sig(v: float, digits: int = 4) -> float:
    return float(f"{float(v):.{digits}g}")


def calibration_stats(recordings_uv: Iterable[np.ndarray], *, sample_rate_hz: float = 1000.0,
                      thresholds: HealthThresholds = HealthThresholds(),
                      max_samples: int = 100_000, chunk_samples: int = 65_536) -> dict:
    """Per-channel reference statistics of raw calibration recordings, as a small JSON dict.

    recordings_uv: (n, C) arrays in uV (memory maps are read chunk by chunk). Medians are
    taken over an evenly thinned subsample of at most max_samples rows per statistic (levels
    from every 4th sample onwards), so memory stays bounded whatever the recordings' length;
    sums, counts, minima and maxima are exact. Returns the dict InputHealth takes as
    `reference` (format "phosphene-input-health", version 1; docs/input-health.md).
    """
    level_pool = _Pool(max_samples, stride=4)
    step_pool = _Pool(max_samples, stride=1)
    C = None
    n_total = n_steps = n_rec = 0
    step_sum = repeats = vmin = vmax = n_min = n_max = None
    for rec in recordings_uv:
        if rec.ndim != 2 or rec.shape[0] == 0:
            raise InputError(f"calibration recordings must be (n, C) arrays with n > 0, got {rec.shape}")
        if C is None:
            C = rec.shape[1]
            step_sum, repeats = np.zeros(C), np.zeros(C, np.int64)
            vmin, vmax = np.full(C, np.inf, np.float32), np.full(C, -np.inf, np.float32)
            n_min, n_max = np.zeros(C, np.int64), np.zeros(C, np.int64)
        elif rec.shape[1] != C:
            raise InputError(f"calibration recordings disagree on channels: {C} and {rec.shape[1]}")
        n_rec += 1
        prev = None
        for start in range(0, rec.shape[0], chunk_samples):
            x = np.asarray(rec[start:start + chunk_samples], dtype=np.float32)
            if not np.isfinite(x).all():
                raise InputError(f"calibration recording {n_rec - 1} has NaN/inf near sample {start}")
            level_pool.add(x)
            both = x if prev is None else np.concatenate([prev, x])
            d = np.abs(np.diff(both, axis=0))
            step_pool.add(d)
            step_sum += d.sum(axis=0, dtype=np.float64)
            repeats += np.count_nonzero(d == 0, axis=0)
            n_steps += d.shape[0]
            prev = x[-1:]
            for ext, cnt, fn in ((vmin, n_min, np.min), (vmax, n_max, np.max)):
                e = fn(x, axis=0)
                hits = np.count_nonzero(x == e, axis=0)
                better = e < ext if fn is np.min else e > ext
                cnt[:] = np.where(better, hits, np.where(e == ext, cnt + hits, cnt))
                ext[:] = np.where(better, e, ext)
            n_total += x.shape[0]
    if C is None or n_steps == 0:
        raise InputError("calibration needs at least one recording of two or more samples")
    levels = level_pool.array(C)
    median = np.median(levels, axis=0)
    robust_sd = _MAD_TO_SD * np.median(np.abs(levels - median), axis=0)
    step = np.median(step_pool.array(C), axis=0)
    t = thresholds
    typical_step = float(np.median(step))
    dead = np.flatnonzero((step < t.dead_floor_uv) | (step < t.dead_step_ratio * typical_step))
    live = np.setdiff1d(np.arange(C), dead)

    def pinned(ext, cnt):
        frac = cnt / n_total
        return [(_sig(v) if f >= t.pinned_fraction else None) for v, f in zip(ext, frac)]

    q = (lambda a: float(np.median(a))) if live.size else (lambda a: float("nan"))
    return {
        "format": HEALTH_FORMAT,
        "version": HEALTH_VERSION,
        "n_channels": int(C),
        "sample_rate_hz": float(sample_rate_hz),
        "n_recordings": n_rec,
        "n_samples": int(n_total),
        "channels": {
            "median_uv": [_sig(v) for v in median],
            "robust_sd_uv": [_sig(v) for v in robust_sd],
            "step_uv": [_sig(v) for v in step],  # median |x[t] - x[t-1]|: the noise floor
            "mean_step_uv": [_sig(v) for v in step_sum / n_steps],
            "repeat_fraction": [_sig(v, 3) for v in repeats / n_steps],
            "pinned_min_uv": pinned(vmin, n_min),  # a floor the channel sat on (else null)
            "pinned_max_uv": pinned(vmax, n_max),
        },
        "dead_at_calibration": [int(c) for c in dead],
        "summary": {
            "live_channels": int(live.size),
            "median_step_uv": _sig(q(step[live])),
            "median_robust_sd_uv": _sig(q(robust_sd[live])),
            "median_level_uv": _sig(q(median[live])),
            "step_uv_p5_p95": [_sig(v) for v in (np.percentile(step[live], [5, 95])
                                                if live.size else (math.nan, math.nan))],
        },
        "thresholds": t.to_dict(),
    }


def _check_reference(ref: dict, n_channels: int) -> dict:
    if not isinstance(ref, dict) or ref.get("format") != HEALTH_FORMAT:
        raise InputError(f"input-health reference is not a {HEALTH_FORMAT} dict")
    version = ref.get("version")
    if not isinstance(version, int) or version > HEALTH_VERSION:
        raise InputError(f"input-health reference has version {version!r}; this phosphene reads "
                         f"version {HEALTH_VERSION}")
    ch = ref.get("channels") or {}
    for key in ("median_uv", "robust_sd_uv", "step_uv", "mean_step_uv"):
        if len(ch.get(key) or ()) != n_channels:
            raise InputError(f"input-health reference describes {len(ch.get(key) or ())} channels "
                             f"({key}); the stream has {n_channels}")
    return ref


# --------------------------------------------------------------------------------------
# The report
# --------------------------------------------------------------------------------------
@dataclass(frozen=True)
class HealthReport:
    """One assessment. Channel lists hold 0-based columns; new faults exclude calibration-dead ones."""

    time_s: float | None
    samples: int  # samples the window covered
    warming_up: bool  # fewer than min_fill x window_s samples yet: nothing classified
    dead: tuple[int, ...] = ()
    flat: tuple[int, ...] = ()
    saturated: tuple[int, ...] = ()
    dead_at_calibration: tuple[int, ...] = ()
    noise_up: int = 0  # channels whose median step rose beyond scale_factor
    noise_down: int = 0
    level_up: int = 0  # channels whose median rose beyond level_sds reference SDs
    level_down: int = 0
    ood_score: float | None = None  # share of calibration-live channels that moved (no reference: None)
    ood: bool = False
    noise_ratio: float | None = None  # median over healthy channels of mean step / reference mean step
    has_reference: bool = False
    refuse_faulty: int = 1

    @property
    def faulty(self) -> tuple[int, ...]:
        """New dead, flat or saturated channels."""
        return tuple(sorted(self.dead + self.flat + self.saturated))

    @property
    def ok(self) -> bool:
        """No new faulty channel and not out of distribution (True while warming up)."""
        return self.warming_up or (not self.faulty and not self.ood)

    def refuse_reason(self) -> str | None:
        """Why decisions on this input should be refused (None: healthy or not yet known)."""
        if self.warming_up:
            return None
        parts = []
        if len(self.faulty) >= self.refuse_faulty:
            parts.append(self._faults_text())
        if self.ood:
            parts.append(self._ood_text())
        return "input unhealthy: " + "; ".join(parts) if parts else None

    def _faults_text(self, limit: int = 6) -> str:
        out = []
        for name, chans in (("dead", self.dead), ("flat", self.flat), ("saturated", self.saturated)):
            if chans:
                shown = ", ".join(str(c) for c in chans[:limit]) + (", ..." if len(chans) > limit else "")
                out.append(f"{len(chans)} {name} (ch {shown})")
        return ", ".join(out)

    def _ood_text(self) -> str:
        text = f"OOD {self.ood_score:.2f}"
        if self.noise_ratio is not None and abs(math.log(self.noise_ratio)) > math.log(1.25):
            text += f" (noise floor x{self.noise_ratio:.2f})"
        return text

    def status_text(self) -> str:
        """One short phrase for a status line."""
        if self.warming_up:
            return "health warming up"
        parts = [p for p in (self._faults_text(limit=4), self._ood_text() if self.ood else "") if p]
        if not parts:
            return "health ok" if self.has_reference else "health ok (no reference)"
        return "health: " + ", ".join(parts)

    def to_json(self) -> dict:
        def r(v):
            return (None if v is None else round(float(v), 3))
        return {
            "ok": self.ok, "warming_up": self.warming_up, "samples": self.samples,
            "dead": list(self.dead), "flat": list(self.flat), "saturated": list(self.saturated),
            "dead_at_calibration": list(self.dead_at_calibration),
            "moved": {"noise_up": self.noise_up, "noise_down": self.noise_down,
                      "level_up": self.level_up, "level_down": self.level_down},
            "ood": self.ood, "ood_score": r(self.ood_score), "noise_ratio": r(self.noise_ratio),
        }


# --------------------------------------------------------------------------------------
# The streaming monitor
# --------------------------------------------------------------------------------------
# per-sub-block count rows
_HI, _LO, _DEAD, _REP, _LV_HI, _LV_LO, _RAIL = range(7)


class InputHealth:
    """Running per-channel input statistics over the last ~window_s of raw uV samples.

    update(block) is called once per received block with raw (n, C) float32 uV (before the
    normaliser). Samples are staged into a sub-block buffer; each full sub-block
    (sub_block_s) is reduced to per-channel counts, min/max and step sums in one vectorised
    pass and stored in a ring of window_s / sub_block_s slots, so update costs O(n x C) and
    allocates nothing that persists. assess(now_s) sums the slots (O(slots x C)) and
    classifies: call it in idle time, a few times a second.
    """

    def __init__(self, n_channels: int, reference: dict | None, sample_rate_hz: float, *,
                 thresholds: HealthThresholds | None = None,
                 rails_uv: tuple[float, float] | None = None, **overrides):
        if n_channels <= 0 or not sample_rate_hz > 0:
            raise ValueError("channel count and sample rate must be positive")
        C = self.n_channels = int(n_channels)
        self.reference = _check_reference(reference, C) if reference is not None else None
        base = thresholds or (HealthThresholds.from_dict(reference.get("thresholds", {}))
                              if reference is not None else HealthThresholds())
        self.thresholds = t = HealthThresholds(**{**base.to_dict(), **overrides})
        self.sample_rate_hz = float(sample_rate_hz)
        self.sub_samples = max(2, round(t.sub_block_s * self.sample_rate_hz))
        self.n_slots = max(1, round(t.window_s / t.sub_block_s))
        self.rails_uv = rails_uv
        # thresholds per channel (float32, compared with float32 samples)
        inf = np.float32(np.inf)
        self._dead_cal = np.zeros(C, bool)
        self._pin_min = np.full(C, np.nan, np.float32)
        self._pin_max = np.full(C, np.nan, np.float32)
        if self.reference is None:
            self._thr_hi = np.full(C, inf)
            self._thr_lo = np.full(C, -inf)
            self._thr_dead = np.full(C, t.dead_floor_uv, np.float32)
            self._lv_hi = np.full(C, inf)
            self._lv_lo = np.full(C, -inf)
            self._ref_mean_step = None
            self._pin_min[:] = 0.0  # MUA is a non-negative envelope: 0 uV is its floor
        else:
            ch = self.reference["channels"]
            step = np.asarray(ch["step_uv"], np.float64)
            med = np.asarray(ch["median_uv"], np.float64)
            sd = np.asarray(ch["robust_sd_uv"], np.float64)
            self._dead_cal[[int(c) for c in self.reference.get("dead_at_calibration", [])]] = True
            live = ~self._dead_cal
            def f32(a):
                return (np.asarray(a, np.float32))
            self._thr_hi = np.where(live, f32(step * t.scale_factor), inf)
            self._thr_lo = np.where(live, f32(step / t.scale_factor), -inf)
            self._thr_dead = np.where(live, f32(step * t.dead_step_ratio), -inf)
            self._lv_hi = np.where(live, f32(med + t.level_sds * sd), inf)
            self._lv_lo = np.where(live, f32(med - t.level_sds * sd), -inf)
            self._ref_mean_step = np.asarray(ch["mean_step_uv"], np.float64)
            for key, arr in (("pinned_min_uv", self._pin_min), ("pinned_max_uv", self._pin_max)):
                vals = ch.get(key) or [None] * C
                arr[:] = [np.nan if v is None else v for v in vals]
        # ring of per-sub-block statistics
        K = self.n_slots
        self._count_ring = np.zeros((K, 7, C), np.int32)
        self._step_sum = np.zeros((K, C), np.float64)
        self._vmax = np.zeros((K, C), np.float32)
        self._vmin = np.zeros((K, C), np.float32)
        self._nmax = np.zeros((K, C), np.int32)
        self._nmin = np.zeros((K, C), np.int32)
        self._n = np.zeros(K, np.int64)  # samples per slot
        self._nsteps = np.zeros(K, np.int64)  # steps per slot
        # staging and scratch; thresholds are repeated to full (sub_samples, C) arrays because
        # a broadcasting comparison makes numpy allocate an iteration buffer on every call
        S = self.sub_samples
        self._stage = np.zeros((S, C), np.float32)
        self._diff = np.zeros((S, C), np.float32)
        self._row = np.zeros((S, C), np.float32)
        self._mask = np.zeros((S, C), bool)
        self._mask2 = np.zeros((S, C), bool)
        self._ints = np.zeros((S, C), np.int32)
        self._sum32 = np.zeros(C, np.float32)
        self._ones = np.ones(S, np.float32)
        self._full = np.empty((5, S, C), np.float32)
        for i, thr in enumerate((self._thr_hi, self._thr_lo, self._thr_dead, self._lv_hi, self._lv_lo)):
            self._full[i] = thr
        self._prev = np.zeros(C, np.float32)
        self.reset()

    def reset(self) -> None:
        """Forget all statistics (e.g. after a device restart)."""
        self._fill = 0
        self._has_prev = False
        self._slot = 0  # next slot to write
        self._slots_filled = 0
        self._n[:] = 0
        self._nsteps[:] = 0
        self.samples_seen = 0

    # ---- feeding -----------------------------------------------------------------------
    def update(self, block: np.ndarray) -> None:
        """Add raw samples: block (n, C) float32 uV, finite, in stream order."""
        if block.ndim != 2 or block.shape[1] != self.n_channels:
            raise ValueError(f"expected raw samples of shape (n, {self.n_channels}), got {block.shape}")
        n, pos, S = block.shape[0], 0, self.sub_samples
        while pos < n:
            take = min(n - pos, S - self._fill)
            self._stage[self._fill:self._fill + take] = block[pos:pos + take]
            self._fill += take
            pos += take
            if self._fill == S:
                self._fold()
        self.samples_seen += n

    def _count(self, mask: np.ndarray, out: np.ndarray) -> None:
        """out (C,) int32 = per-channel count of True in mask (rows x C), without temporaries."""
        ints = self._ints[:mask.shape[0]]
        np.copyto(ints, mask)
        np.add.reduce(ints, axis=0, out=out)

    def _fold(self) -> None:
        """Reduce the full staging buffer into the next ring slot (no allocation)."""
        x, d, m, m2, row, full = self._stage, self._diff, self._mask, self._mask2, self._row, self._full
        k = self._slot
        cnt = self._count_ring[k]
        np.subtract(x[1:], x[:-1], out=d[1:])
        if self._has_prev:
            np.subtract(x[0], self._prev, out=d[0])
            first = 0
        else:
            first = 1
        dv, mv = d[first:], m[first:]
        np.abs(dv, out=dv)
        for r, op, i in ((_HI, np.greater, 0), (_LO, np.less, 1), (_DEAD, np.less, 2)):
            op(dv, full[i, first:], out=mv)
            self._count(mv, cnt[r])
        np.equal(dv, np.float32(0.0), out=mv)
        self._count(mv, cnt[_REP])
        np.matmul(self._ones[first:], dv, out=self._sum32)
        np.copyto(self._step_sum[k], self._sum32)
        np.greater(x, full[3], out=m)
        self._count(m, cnt[_LV_HI])
        np.less(x, full[4], out=m)
        self._count(m, cnt[_LV_LO])
        if self.rails_uv is not None:
            np.less_equal(x, np.float32(self.rails_uv[0]), out=m)
            np.greater_equal(x, np.float32(self.rails_uv[1]), out=m2)
            np.logical_or(m, m2, out=m)
            self._count(m, cnt[_RAIL])
        else:
            cnt[_RAIL] = 0
        for ext, fn, n_at in ((self._vmax, np.max, self._nmax), (self._vmin, np.min, self._nmin)):
            fn(x, axis=0, out=ext[k])
            np.copyto(row, ext[k])
            np.equal(x, row, out=m)
            self._count(m, n_at[k])
        self._n[k] = x.shape[0]
        self._nsteps[k] = x.shape[0] - first
        self._prev[:] = x[-1]
        self._has_prev = True
        self._fill = 0
        self._slot = (k + 1) % self.n_slots
        self._slots_filled = min(self._slots_filled + 1, self.n_slots)

    # ---- assessing ---------------------------------------------------------------------
    def assess(self, now_s: float | None = None) -> HealthReport:
        """Classify the channels on the last window_s of complete sub-blocks."""
        t = self.thresholds
        cal_dead = tuple(int(c) for c in np.flatnonzero(self._dead_cal))
        valid = np.arange(self.n_slots) < self._slots_filled  # slots fill 0, 1, ... then wrap
        N = int(self._n[valid].sum())
        steps = int(self._nsteps[valid].sum())
        common = {"time_s": now_s, "samples": N, "dead_at_calibration": cal_dead,
                  "has_reference": self.reference is not None, "refuse_faulty": t.refuse_faulty}
        if t.min_fill * t.window_s * self.sample_rate_hz > N or steps == 0:
            return HealthReport(warming_up=True, **common)
        cnt = self._count_ring[valid].sum(axis=0)  # (7, C)
        vmax, vmin = self._vmax[valid], self._vmin[valid]
        wmax, wmin = vmax.max(axis=0), vmin.min(axis=0)
        at_max = np.where(vmax == wmax, self._nmax[valid], 0).sum(axis=0)
        at_min = np.where(vmin == wmin, self._nmin[valid], 0).sum(axis=0)
        # the same value after the wire's rounding (0.02 uV int16, float16) or float16 storage
        pinned_max = np.abs(wmax - self._pin_max) <= 0.05 + 2e-3 * np.abs(self._pin_max)
        pinned_min = np.abs(wmin - self._pin_min) <= 0.05 + 2e-3 * np.abs(self._pin_min)
        flat = cnt[_REP] == steps
        on_rail = cnt[_RAIL] >= t.rail_fraction * N
        saturated = (on_rail | ((at_max >= t.saturated_fraction * N) & ~pinned_max)
                     | ((at_min >= t.saturated_fraction * N) & ~pinned_min))
        if self.rails_uv is not None:  # constant at a rail: saturated, not merely flat
            saturated &= ~flat | on_rail
        else:
            saturated &= ~flat
        flat &= ~saturated
        dead = (2 * cnt[_DEAD] > steps) & ~flat & ~saturated
        live = ~self._dead_cal

        def new(mask: np.ndarray) -> tuple[int, ...]:
            return tuple(int(c) for c in np.flatnonzero(mask & live))

        noise_up, noise_down = 2 * cnt[_HI] > steps, 2 * cnt[_LO] > steps
        level_up, level_down = 2 * cnt[_LV_HI] > N, 2 * cnt[_LV_LO] > N
        score = ratio = None
        ood = False
        if self.reference is not None and live.any():
            faulty = dead | flat | saturated
            moved = (noise_up | noise_down | level_up | level_down | faulty) & live
            score = float(moved.sum() / live.sum())
            ood = score >= t.ood_fraction
            healthy = live & ~faulty & (self._ref_mean_step > 0)
            if healthy.any():
                mean_step = self._step_sum[valid].sum(axis=0) / steps
                ratio = float(np.median(mean_step[healthy] / self._ref_mean_step[healthy]))
        return HealthReport(
            warming_up=False, dead=new(dead), flat=new(flat), saturated=new(saturated),
            noise_up=int((noise_up & live).sum()), noise_down=int((noise_down & live).sum()),
            level_up=int((level_up & live).sum()), level_down=int((level_down & live).sum()),
            ood_score=score, ood=ood, noise_ratio=ratio, **common)
