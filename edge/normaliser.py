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
    future: concurrent.futures.Future  # -> (C, nA) float32, each row sorted


@dataclass
class EdgeNormaliser(Normaliser):
    """Normaliser(n_channels, config) whose robust refresh costs ~0.1 ms at the boundary.

    Call prepare() in idle time (after a batch's decisions are written); process() is
    unchanged. `fast_refreshes` / `slow_refreshes` count which path each refresh took.
    """

    lead_samples: int = 64  # prepare once the boundary is at most this many samples ahead
    fast_refreshes: int = field(default=0, init=False)
    slow_refreshes: int = field(default=0, init=False)

    def __post_init__(self) -> None:
        self._pool = concurrent.futures.ThreadPoolExecutor(
            max_workers=1, thread_name_prefix="normaliser-prepare", initializer=_ordinary_priority)
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
        # copy now: these ring slots are not overwritten before the boundary (window >= refresh)
        known = np.ascontiguousarray(self._ring[times % cfg.window_samples].T)
        self._prepared = _Prepared(boundary, t, self._pool.submit(np.sort, known, axis=1))
        return True

    def wait_prepared(self, timeout_s: float | None = None) -> None:
        """Block until the preparation started by prepare() is done (benchmarks, tests)."""
        if self._prepared is not None:
            concurrent.futures.wait([self._prepared.future], timeout=timeout_s)

    # ---- at the boundary -------------------------------------------------------------------
    def _refresh(self) -> None:
        prepared, self._prepared = self._prepared, None
        T = self.samples_seen
        if (prepared is None or prepared.boundary != T or not prepared.future.done()
                or prepared.future.exception() is not None):
            self.slow_refreshes += 1
            return super()._refresh()
        cfg = self.config
        sorted_known = prepared.future.result()
        times = self._decimated_times(T, T)
        recent = np.ascontiguousarray(self._ring[times[times >= prepared.prepared_at] % cfg.window_samples].T)
        if not (np.isfinite(sorted_known).all() and np.isfinite(recent).all()):
            self.slow_refreshes += 1
            return super()._refresh()
        center = _median_merge(sorted_known, recent)
        mad = _mad_merge(sorted_known, recent, center)
        # exactly the core's arithmetic from here on (float32 throughout)
        scale = 1.4826 * mad
        self.center = center.astype(np.float32)
        self.inv_scale = (1.0 / np.maximum(scale, cfg.floor_uv)).astype(np.float32)
        self.fast_refreshes += 1


def _ordinary_priority() -> None:
    """The preparing thread must never compete with a real-time decision thread it came from."""
    import os

    try:
        if os.sched_getscheduler(0) != os.SCHED_OTHER:
            os.sched_setscheduler(0, os.SCHED_OTHER, os.sched_param(0))
    except (AttributeError, OSError):  # not Linux, or not allowed: nothing to undo
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


def _median_merge(sorted_known: np.ndarray, recent: np.ndarray) -> np.ndarray:
    """Median per row of (sorted_known ∪ recent). sorted_known: (C, nA) rows sorted; recent: (C, nB).

    The rank-r value of the union has rank in [r - nB, r] among the sorted part, so only
    sorted_known[:, r1 - nB : r2 + 1] and the recent values can hold it.
    """
    nA, nB = sorted_known.shape[1], recent.shape[1]
    r1, r2 = _middle_ranks(nA + nB)
    lo, hi = max(0, r1 - nB), min(nA, r2 + 1)
    return _finish_median(np.concatenate([sorted_known[:, lo:hi], recent], axis=1), r1, r2, lo)


def _row_searchsorted(rows: np.ndarray, values: np.ndarray) -> np.ndarray:
    """Per row i: number of rows[i] elements < values[i] (rows sorted)."""
    C, n = rows.shape
    lo = np.zeros(C, dtype=np.int64)
    hi = np.full(C, n, dtype=np.int64)
    idx = np.arange(C)
    while True:
        active = lo < hi
        if not active.any():
            return lo
        mid = (lo + hi) // 2
        below = np.zeros(C, dtype=bool)
        below[active] = rows[idx[active], mid[active]] < values[active]
        lo = np.where(active & below, mid + 1, lo)
        hi = np.where(active & ~below, mid, hi)


def _mad_merge(sorted_known: np.ndarray, recent: np.ndarray, center: np.ndarray) -> np.ndarray:
    """Median of |x - center| per row over (sorted_known ∪ recent), as float32.

    |x - c| over a sorted row is two sorted runs: left of c (read backwards) and right of c.
    A vectorised two-run selection finds where the first `lo` distances end; the next few
    of each run plus the recent distances hold the answer.
    """
    C, nA = sorted_known.shape
    nB = recent.shape[1]
    r1, r2 = _middle_ranks(nA + nB)
    lo, hi = max(0, r1 - nB), min(nA, r2 + 1)
    width = hi - lo
    c = center.astype(np.float32)
    split = _row_searchsorted(sorted_known, c)  # left run: [0, split), right run: [split, nA)
    n_left, n_right = split, nA - split
    rows = np.arange(C)

    def left(i):  # i-th smallest distance of the left run (i < n_left)
        return np.abs(sorted_known[rows, np.clip(split - 1 - i, 0, nA - 1)] - c)

    def right(j):  # j-th smallest distance of the right run (j < n_right)
        return np.abs(sorted_known[rows, np.clip(split + j, 0, nA - 1)] - c)

    # smallest i in [max(0, lo - n_right), min(lo, n_left)] with left(i) >= right(lo - i - 1)
    i_lo = np.maximum(0, lo - n_right)
    i_hi = np.minimum(lo, n_left)
    while True:
        active = i_lo < i_hi
        if not active.any():
            break
        mid = (i_lo + i_hi) // 2
        take_more_left = left(mid) < right(lo - mid - 1)
        i_lo = np.where(active & take_more_left, mid + 1, i_lo)
        i_hi = np.where(active & ~take_more_left, mid, i_hi)
    i0 = i_lo
    j0 = lo - i0
    steps = np.arange(width)[None, :]
    li = i0[:, None] + steps  # next `width` of each run after the first `lo` distances
    rj = j0[:, None] + steps
    inf = np.float32(np.inf)
    left_d = np.where(li < n_left[:, None],
                      np.abs(sorted_known[rows[:, None], np.clip(split[:, None] - 1 - li, 0, nA - 1)]
                             - c[:, None]), inf)
    right_d = np.where(rj < n_right[:, None],
                       np.abs(sorted_known[rows[:, None], np.clip(split[:, None] + rj, 0, nA - 1)]
                              - c[:, None]), inf)
    recent_d = np.abs(recent - c[:, None])
    return _finish_median(np.concatenate([left_d, right_d, recent_d], axis=1).astype(np.float32),
                          r1, r2, lo)
