"""The core Normaliser with its robust refresh taken off the decision path (same bytes out).

The one signal definition (phosphene.signal.Normaliser) recomputes median and MAD over the
trailing window every `refresh_s`, on the first sample of each refresh period. On a board
that is a few ms once a second, and it falls on whichever decision needs that sample: the
decision p99 would be the refresh. EdgeNormaliser computes the same statistics in two
parts: most of the window (every decimated sample that has arrived by `lead_samples` before
the boundary) is copied and sorted ahead of time in a worker thread; at the boundary only
the few decimated samples that arrived since are merged in, by selection on the sorted
rows (O(log n) per channel). The result is bit-identical to Normaliser's (np.median of
float32, mean of the two middle values, the same float32 arithmetic);
tests/edge/test_normaliser.py checks it over random streams and chunkings, and any case the
fast path does not cover (z-score method, non-finite input, preparation not finished) falls
back to the core refresh itself.
"""

from __future__ import annotations

import concurrent.futures
import logging
from dataclasses import dataclass, field

import numpy as np

from phosphene.signal import Normaliser

__all__ = ["EdgeNormaliser"]

log = logging.getLogger(__name__)


@dataclass
class _Prepared:
    boundary: int  # samples_seen at which these statistics are due
    prepared_at: int  # samples_seen when the sorted part was copied: it holds t < prepared_at
    future: concurrent.futures.Future  # -> _Known


_BAND = 384  # sorted values kept, per row, around each place the refresh will look


@dataclass
class _Band:
    """A contiguous slice of each sorted row: values[i] = rows[i, start[i] : start[i] + width]."""

    start: np.ndarray  # (C,) int64
    values: np.ndarray  # (C, width) float32
    n: int  # full row length

    @classmethod
    def around(cls, rows: np.ndarray, index: np.ndarray, *, before: float = 0.5) -> _Band:
        """The slice holding `index`, with `before` of its width below it."""
        C, n = rows.shape
        width = min(n, _BAND)
        start = np.clip(index - int(width * before), 0, n - width).astype(np.int64)
        values = np.ascontiguousarray(rows[np.arange(C)[:, None], start[:, None] + np.arange(width)])
        return cls(start, values, n)

    def count_below(self, values: np.ndarray, *, inclusive: bool) -> tuple[np.ndarray, np.ndarray]:
        """Per row: elements < values (<= when inclusive), and whether the band could tell."""
        v = values.astype(np.float32)[:, None]
        count = ((self.values <= v) if inclusive else (self.values < v)).sum(axis=1)
        width = self.values.shape[1]
        sure = (((count > 0) | (self.start == 0))
                & ((count < width) | (self.start + width == self.n)))
        return self.start + count, sure

    def take(self, index: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """rows[i, index[i, :]] from the band, and whether each was inside it."""
        local = index - self.start[:, None]
        held = (local >= 0) & (local < self.values.shape[1])
        rows = np.arange(self.values.shape[0])[:, None]
        return self.values[rows, np.clip(local, 0, self.values.shape[1] - 1)], held


@dataclass
class _Known:
    """The part of the next refresh's window known ahead of time, worked up in the helper.

    The refresh reads only compact slices (a few hundred KB, contiguous): the full sorted
    rows are kept for the rare row a slice cannot answer.
    """

    rows: np.ndarray  # (C, nA) float32, each row sorted
    center: np.ndarray  # (C,) median of the rows alone
    radius: np.ndarray  # (C,) float64: >= r2 + 1 distances (to `center`) are within it
    n_recent: int  # decimated samples still to come before the boundary
    middle: np.ndarray  # (C, m) rows[:, middle_lo : middle_lo + m]: where the final median lies
    middle_lo: int
    lowest: np.ndarray  # (C,) rows[:, 0]
    highest: np.ndarray  # (C,) rows[:, -1]
    # slices around where the MAD search lands: center - radius, center, center + radius
    band_lo: _Band
    band_center: _Band
    band_hi: _Band


def _work_up(known: np.ndarray, n_recent: int) -> _Known:
    """Off the decision path: sort, bound the MAD, and cut the slices the refresh will read."""
    C, nA = known.shape
    rows = np.sort(known, axis=1)
    r1, r2 = _middle_ranks(nA)
    center = ((rows[:, r1] + rows[:, r2]) / np.float32(2)).astype(np.float32)
    rank = min(nA - 1, (nA + n_recent) // 2)  # the final MAD's upper rank, within these rows
    distances = np.abs(rows - center[:, None])
    radius = np.partition(distances, rank, axis=1)[:, rank].astype(np.float64)
    r32 = radius.astype(np.float32)
    guesses = [np.array([np.searchsorted(row, v, side=side)
                         for row, v in zip(rows, values, strict=True)])
               for values, side in ((center - r32, "left"), (center, "left"), (center + r32, "right"))]
    f1, f2 = _middle_ranks(nA + n_recent)
    middle_lo, middle_hi = max(0, f1 - n_recent), min(nA, f2 + 1)
    return _Known(rows, center, radius, n_recent,
                  np.ascontiguousarray(rows[:, middle_lo:middle_hi]), middle_lo,
                  rows[:, 0].copy(), rows[:, -1].copy(),
                  # the MAD's candidates run from each radius edge toward the center
                  _Band.around(rows, guesses[0], before=0.25), _Band.around(rows, guesses[1]),
                  _Band.around(rows, guesses[2], before=0.75))


@dataclass
class EdgeNormaliser(Normaliser):
    """Normaliser(n_channels, config) whose robust refresh costs a fraction of a ms at the boundary.

    Call prepare() in idle time (after a batch's decisions are written); process() is
    unchanged. `fast_refreshes` / `slow_refreshes` count which path each refresh took.
    """

    lead_samples: int = 64  # prepare once the boundary is at most this many samples ahead
    fast_refreshes: int = field(default=0, init=False)
    slow_refreshes: int = field(default=0, init=False)
    inline_reasons: dict = field(default_factory=dict, init=False)  # why a refresh ran inline

    def __post_init__(self) -> None:
        self._pool = concurrent.futures.ThreadPoolExecutor(
            max_workers=1, thread_name_prefix="normaliser-prepare", initializer=_below_caller_priority)
        super().__post_init__()

    def reset(self) -> None:
        super().reset()
        self._prepared: _Prepared | None = None

    def close(self) -> None:
        self._pool.shutdown(wait=False, cancel_futures=True)

    # ---- ahead of the boundary -------------------------------------------------------------
    def _decimated_times(self, boundary: int, stop: int) -> np.ndarray:
        """Sample indices t in [max(0, boundary - W), stop) with t % decimate == 0."""
        W, k = self.config.window_samples, self.config.decimate
        start = max(0, boundary - W)
        first = -(-start // k) * k
        return np.arange(first, stop, k)

    def prepare(self) -> bool:
        """Start sorting the next refresh's known samples if the boundary is near; True if started."""
        cfg = self.config
        if cfg.method != "robust":
            return False
        t = self.samples_seen
        R = cfg.refresh_samples
        # a boundary reached exactly is refreshed at the start of the next process() call
        boundary = t if t > 0 and t % R == 0 else (t // R + 1) * R
        if boundary - t > self.lead_samples:
            return False
        if self._prepared is not None and self._prepared.boundary == boundary:
            return False
        times = self._decimated_times(boundary, t)
        n_recent = len(self._decimated_times(boundary, boundary)) - len(times)
        # copy now: these ring slots are not overwritten before the boundary (window >= refresh)
        known = np.ascontiguousarray(self._ring[times % cfg.window_samples].T)
        if not np.isfinite(known).all():
            return False  # the core refresh will handle (and propagate) non-finite input
        self._prepared = _Prepared(boundary, t, self._pool.submit(_work_up, known, n_recent))
        return True

    def wait_prepared(self, timeout_s: float | None = None) -> None:
        """Block until the preparation started by prepare() is done (benchmarks, tests)."""
        if self._prepared is not None:
            concurrent.futures.wait([self._prepared.future], timeout=timeout_s)

    # ---- at the boundary -------------------------------------------------------------------
    def _inline_refresh(self, reason: str) -> None:
        self.slow_refreshes += 1
        self.inline_reasons[reason] = self.inline_reasons.get(reason, 0) + 1
        super()._refresh()

    def _refresh(self) -> None:
        prepared, self._prepared = self._prepared, None
        T = self.samples_seen
        reason = ("not prepared" if prepared is None or prepared.boundary != T
                  else "preparation not finished" if not prepared.future.done()
                  else f"preparation failed: {prepared.future.exception()!r}"
                  if prepared.future.exception() is not None else None)
        if reason is not None:
            return self._inline_refresh(reason)
        cfg = self.config
        known: _Known = prepared.future.result()
        times = self._decimated_times(T, T)
        recent = np.ascontiguousarray(self._ring[times[times >= prepared.prepared_at] % cfg.window_samples].T)
        if recent.shape[1] != known.n_recent or not np.isfinite(recent).all():
            return self._inline_refresh("recent samples differ from the preparation")
        center = _median_merge_prepared(known, recent)
        mad = _mad_merge(known, recent, center)
        # exactly the core's arithmetic from here on (float32 throughout)
        scale = 1.4826 * mad
        self.center = center.astype(np.float32)
        self.inv_scale = (1.0 / np.maximum(scale, cfg.floor_uv)).astype(np.float32)
        self.fast_refreshes += 1


def _below_caller_priority() -> None:
    """The preparing thread inherits the deciding thread's scheduling; step one below it.

    Under SCHED_FIFO (the runtime's --realtime) it then still runs ahead of every ordinary
    process, so its work is ready at the boundary, but never ahead of a decision.
    """
    import os

    try:
        policy = os.sched_getscheduler(0)
        if policy in (os.SCHED_FIFO, os.SCHED_RR):
            priority = os.sched_getparam(0).sched_priority
            if priority > 1:
                os.sched_setscheduler(0, policy, os.sched_param(priority - 1))
            else:
                os.sched_setscheduler(0, os.SCHED_OTHER, os.sched_param(0))
    except (AttributeError, OSError):  # not Linux, or not allowed: keep what it has
        pass


# --------------------------------------------------------------------------------------
# selection on sorted rows plus a few extra values (all vectorised over channels)
# --------------------------------------------------------------------------------------
def _middle_ranks(n: int) -> tuple[int, int]:
    """0-based ranks np.median averages: equal for odd n."""
    return (n - 1) // 2, n // 2


def _finish_median(candidates: np.ndarray, r1: int, r2: int, lo: int) -> np.ndarray:
    """Sort candidates (C, m) and take np.median's value at global ranks r1, r2."""
    c = np.sort(candidates, axis=1)
    a, b = c[:, r1 - lo], c[:, r2 - lo]
    if r1 == r2:
        return a.astype(np.float32)
    # np.median of float32: mean of the two middle values, summed and divided in float32
    return ((a + b) / np.float32(2)).astype(np.float32)


def _median_merge_prepared(known: _Known, recent: np.ndarray) -> np.ndarray:
    """Median per row of (known.rows ∪ recent), exactly as np.median gives it.

    The rank-r value of the union has rank in [r - nB, r] among the sorted rows, so only
    rows[:, r1 - nB : r2 + 1] (the prepared middle slice) and the recent values can hold it.
    """
    nA, nB = known.rows.shape[1], recent.shape[1]
    r1, r2 = _middle_ranks(nA + nB)
    return _finish_median(np.concatenate([known.middle, recent], axis=1), r1, r2, known.middle_lo)


def _mad_merge(known: _Known, recent: np.ndarray, center: np.ndarray) -> np.ndarray:
    """Median of |x - center| per row over (known.rows ∪ recent), float32, as np.median gives.

    Distances over a sorted row form two sorted runs (left of the center read backwards,
    right of it forwards). The helper bounded the answer by a radius t: the first i_a left
    and j_a right distances are <= t, at least r2 + 1 of them. So the answer is among the
    last (i_a + j_a - lo) of each run below t and the recent values, and the first
    (i_a + j_a - lo) of each counted run are below it. Float rounding is respected: the run
    boundaries are found on fl(|x - c|) itself, not on c +- t. A row the prepared slices
    cannot answer (long runs of tied values, as on a dead channel) is computed directly.
    """
    rows, n_recent = known.rows, recent.shape[1]
    C, nA = rows.shape
    r1, r2 = _middle_ranks(nA + n_recent)
    lo = max(0, r1 - n_recent)
    c = center.astype(np.float32)
    # the radius for this center: distances to c are within |c - c_known| of those to c_known
    shift = np.abs(c.astype(np.float64) - known.center.astype(np.float64))
    t = np.nextafter((known.radius + shift).astype(np.float32), np.float32(np.inf))
    p, sure_p = known.band_center.count_below(c, inclusive=False)  # left run: rows[:, :p] (x < c)
    # smallest x with fl(c - x) <= t, and largest x with fl(x - c) <= t, exactly in float32
    x_lo, found_lo = _edge(c, t, toward=-np.inf)
    x_hi, found_hi = _edge(c, t, toward=np.inf)
    # a radius reaching past a row's extreme takes the whole run (the edge search near zero
    # can need more floats than it tests; the extreme itself answers exactly)
    all_left = np.abs(known.lowest - c) <= t
    all_right = np.abs(known.highest - c) <= t
    x_lo, found_lo = np.where(all_left, known.lowest, x_lo), found_lo | all_left
    x_hi, found_hi = np.where(all_right, known.highest, x_hi), found_hi | all_right
    below_lo, sure_lo = known.band_lo.count_below(x_lo, inclusive=False)
    upto_hi, sure_hi = known.band_hi.count_below(x_hi, inclusive=True)
    i_a, j_a = p - below_lo, upto_hi - p
    total = i_a + j_a
    sure = sure_p & sure_lo & sure_hi & found_lo & found_hi & (total >= r2 + 1)
    width = int(np.where(sure, total - lo, 0).max()) if sure.any() else 0
    start_l = np.maximum(0, i_a - width)
    start_r = np.maximum(0, j_a - width)
    k = np.arange(width)[None, :]
    kl = start_l[:, None] + k  # k-th smallest left distance lives at rows[p - 1 - k]
    kr = start_r[:, None] + k  # k-th smallest right distance lives at rows[p + k]
    use_l, use_r = kl < i_a[:, None], kr < j_a[:, None]
    # both runs end at the radius: their last elements sit in the bands cut around it
    left_x, held_l = known.band_lo.take(p[:, None] - 1 - kl)
    right_x, held_r = known.band_hi.take(p[:, None] + kr)
    sure &= (held_l | ~use_l).all(axis=1) & (held_r | ~use_r).all(axis=1)
    inf = np.float32(np.inf)
    left = np.where(use_l, np.abs(left_x - c[:, None]), inf)
    right = np.where(use_r, np.abs(right_x - c[:, None]), inf)
    candidates = np.sort(np.concatenate([left, right, np.abs(recent - c[:, None])], axis=1), axis=1)
    base = np.where(sure, start_l + start_r, 0)  # distances excluded below, all <= the answer
    idx = np.arange(C)
    top = candidates.shape[1] - 1
    a = candidates[idx, np.clip(r1 - base, 0, top)]
    mad = a if r1 == r2 else (a + candidates[idx, np.clip(r2 - base, 0, top)]) / np.float32(2)
    mad = mad.astype(np.float32)
    for i in np.flatnonzero(~sure):  # directly, as the core does for that column
        data = np.concatenate([rows[i], recent[i]])
        mad[i] = np.median(np.abs(data - c[i]))
    return mad


_EDGE_STEPS = 16  # floats tested on each side of fl(c +- t)


def _ordered(x: np.ndarray) -> np.ndarray:
    """float32 -> int64 that orders like the value (adjacent floats differ by 1)."""
    bits = (x + np.float32(0.0)).view(np.int32).astype(np.int64)
    return np.where(bits >= 0, bits, bits ^ 0x7FFFFFFF)


def _from_ordered(k: np.ndarray) -> np.ndarray:
    bits = np.where(k >= 0, k, k ^ 0x7FFFFFFF).astype(np.int32)
    return bits.view(np.float32)


def _edge(c: np.ndarray, t: np.ndarray, *, toward: float) -> tuple[np.ndarray, np.ndarray]:
    """The float32 x furthest from c toward `toward` with fl(|x - c|) <= t, per row.

    fl(c +- t) lands a few floats from that edge (one or two where x > c / 2, the MUA
    case); 2 * 16 + 1 neighbouring floats are tested at once. Returns (x, found): `found`
    is False for a row whose edge lies beyond them (the caller then takes the core's
    refresh, so the result is exact always).
    """
    sign = 1 if toward > 0 else -1
    x0 = (c + np.float32(sign) * t).astype(np.float32)
    steps = np.arange(-_EDGE_STEPS, _EDGE_STEPS + 1)[:, None] * sign  # inside -> outside
    candidates = _from_ordered(_ordered(x0)[None, :] + steps)
    # never past c: beyond it the distance grows again (a tiny t puts x0 within ulps of c)
    candidates = np.maximum(candidates, c) if sign > 0 else np.minimum(candidates, c)
    inside = np.abs(candidates - c) <= t  # true on a prefix: the distance grows outward
    n_inside = inside.sum(axis=0)
    found = (n_inside >= 1) & (n_inside < candidates.shape[0])
    return candidates[np.clip(n_inside - 1, 0, None), np.arange(c.shape[0])], found
