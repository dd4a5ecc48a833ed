"""The core Normaliser with its robust refresh taken off the decision path (same bytes out),
and the quantiser folded in: samples go in as uV and come out as the model's int8 input.

The one signal definition (phosphene.signal.Normaliser) recomputes median and MAD over the
trailing window every `refresh_s`, on the first sample of each refresh period. Inline, that
is a few ms once a second on a board, on whichever decision needs that sample: the
decision p99 would be the refresh. EdgeNormaliser computes the same statistics ahead of
time in a helper thread (prepare(), called in idle time after each batch):

- once the boundary is `lead_samples` away, the helper copies and sorts every decimated
  sample known so far; after the last block before the boundary it does so again, so at
  most the few decimated samples of the block that crosses the boundary are unknown;
- a block that ends exactly on the boundary leaves nothing unknown: the helper computes
  the final statistics with the core's own formula, and the refresh is an assignment;
- otherwise the refresh merges the m unknown samples into the prepared rows: the median
  from m + 2 candidates, the MAD from a band of candidates cut around where it was
  expected, with a check that every value outside the band lies on the right side of
  the answer (a channel the check cannot confirm is computed directly). About 25 small
  numpy operations over all channels at once, not a sort of the window.

The result is bit-identical to Normaliser's (np.median of float32, mean of the two middle
values, the same float32 arithmetic); tests/edge/test_normaliser.py checks it over random
streams and chunkings, and any case the prepared path does not cover (z-score method,
non-finite input, preparation not finished) falls back to the core refresh itself.

process_int8(x, out) is process() followed by the model's input quantisation
(QuantParams.quantize: divide by the scale, add the zero point, round half to even, clip)
in one pass of preallocated float32 operations, with the normaliser's +-clip and the int8
range merged into one clip (exact: every step is monotone, see _merged_bounds). It writes
int8 rows straight into the caller's ring and allocates nothing per call.
"""

from __future__ import annotations

import concurrent.futures
import logging
import math
from dataclasses import dataclass, field

import numpy as np

from phosphene.edge.kernel import KERNEL
from phosphene.signal import Normaliser, NormaliserConfig, inverse_scale

__all__ = ["EdgeNormaliser"]

log = logging.getLogger(__name__)

try:  # the ufunc itself: np.clip is a Python wrapper around it (twice the call cost)
    from numpy._core.umath import clip as _clip_ufunc
except ImportError:  # numpy < 2 (tflite-runtime 2.14 environments)
    from numpy.core.umath import clip as _clip_ufunc

_TILE_ROWS = 64  # blocks up to this many samples use per-row copies of center / 1/scale


@dataclass
class _Prepared:
    boundary: int  # samples_seen at which these statistics are due
    prepared_at: int  # samples_seen when prepared: the helper saw the samples t < prepared_at
    future: concurrent.futures.Future | None = None  # -> the same as `work`
    # set by the helper when done (read without taking the future's lock):
    work: _Exact | _Sorted | _SortedRows | str | None = None  # str: why it cannot be used
    fallback: _Prepared | None = None  # an earlier, finished preparation for the same boundary


@dataclass
class _Exact:
    """Every sample of the refresh window was known: the final statistics, as the core makes them
    (and their per-row copies for blocks of the last block's size, so the refresh is an
    assignment and the next block's operands are ready)."""

    center: np.ndarray
    inv_scale: np.ndarray
    center_rows: np.ndarray | None = None
    inv_rows: np.ndarray | None = None


@dataclass
class _Sorted:
    """All but the last `m` decimated samples of the refresh window, sorted and cut up so that
    the refresh only merges those m samples in (see _merge_recent)."""

    rows: np.ndarray  # (C, nA) sorted rows: for a channel the band cannot confirm
    m: int
    recent_slots: np.ndarray  # (m,) ring slots of the samples still to come
    r1: int  # middle ranks of the full window (nA + m values)
    r2: int
    mbuf: np.ndarray  # (C, wM + m): rows[:, mlo:mhi] then room for the recent values
    wM: int
    i1: int  # ranks r1, r2 within sorted mbuf
    i2: int
    xbuf: np.ndarray  # (C, L + 4): band values, room for the recent ones, padding, 4 edge values
    dbuf: np.ndarray  # (C, L + 4): their distances to the new center
    Bw: int  # band width
    L: int  # candidates per row: band, recent, padding
    J: int  # the answer's rank among every row's candidates (padded)
    pad_mask: np.ndarray  # (C, L - Bw - m) 0: a padding distance of 0, 1: of about 3e38
    edge_lo: np.ndarray  # (C, 4) clip bounds of the edge distances (missing edges pass)
    edge_hi: np.ndarray
    check: np.ndarray  # (C, 4) scratch
    sure: np.ndarray  # (C,) False: the band cannot answer this channel
    all_sure: bool


@dataclass
class _SortedRows:
    """All but the last `m` decimated samples of the refresh window, sorted: the compiled
    kernel's merge_stats takes the m samples in at the boundary (edge/_kernel.c). The bands
    are short copies of each row where the merge is expected to read (a few cache lines per
    channel instead of the ~1 MB the helper sorted on another core); they decide how fast,
    never what: a read outside them goes to the row."""

    rows: np.ndarray  # (C, nA) float32, each row sorted
    m: int
    recent_slots: np.ndarray  # (m,) ring slots of the samples still to come
    band: np.ndarray  # (C, 3, width): copies of the rows where the merge will read
    start: np.ndarray  # (C, 4) int64: the bands' first indices, the split's first guess
    center: np.ndarray  # (C,) float32, written by the merge: the refresh's new arrays
    out: np.ndarray  # (C,) float32: 1 / scale (a constant floor) or the MAD


def _core_stats(data: np.ndarray, config: NormaliserConfig) -> tuple[np.ndarray, np.ndarray]:
    """Normaliser._refresh's arithmetic (robust), on data: (n, C) float32; the scale floor
    is the core's own (phosphene.signal.inverse_scale: MUA constant or the count floor)."""
    center = np.median(data, axis=0)
    scale = 1.4826 * np.median(np.abs(data - center), axis=0)
    center = center.astype(np.float32)
    return center, inverse_scale(scale, center, config)


def _prepare_into(prepared: _Prepared, *args) -> _Exact | _Sorted | str:
    try:
        work = _prepare_stats(*args)
    except Exception as exc:  # reported by the refresh, which then runs inline
        work = f"preparation failed: {exc!r}"
    prepared.work = work
    return work


def _prepare_stats(ring: np.ndarray, slots: np.ndarray, m: int, recent_slots: np.ndarray,
                   config: NormaliserConfig, rows_n: int, kernel=None) -> _Exact | _Sorted | _SortedRows | str:
    """The helper's work: copy the known samples out of the ring (their slots are not
    written again before the boundary) and work them up. Never on the decision path."""
    known = ring[slots]  # (nA, C)
    if not np.isfinite(known).all():
        return "non-finite samples in the window"  # the core refresh propagates them
    if m == 0:
        center, inv_scale = _core_stats(known, config)
        if 0 < rows_n <= _TILE_ROWS and kernel is None:  # the numpy path's per-row operands
            return _Exact(center, inv_scale, np.repeat(center[None], rows_n, axis=0),
                          np.repeat(inv_scale[None], rows_n, axis=0))
        return _Exact(center, inv_scale)
    rows = np.ascontiguousarray(known.T)
    rows.sort(axis=1)
    if kernel is not None and m <= kernel.MERGE_MAX_RECENT:  # the kernel merges from the sorted rows
        C = rows.shape[0]
        band = np.zeros((C, 3, 8 + 2 * m), np.float32)
        start = np.zeros((C, 4), np.int64)
        kernel.bands(rows, m, band, start)
        return _SortedRows(rows, m, recent_slots, band, start,
                           np.zeros(C, np.float32), np.zeros(C, np.float32))
    return _build_sorted(rows, m, recent_slots)


_FAR = np.float32(3e38)  # the x of a padding candidate: its distance is huge (or, masked, 0)


def _build_sorted(rows: np.ndarray, m: int, recent_slots: np.ndarray) -> _Sorted:
    C, nA = rows.shape
    n = nA + m
    r1, r2 = (n - 1) // 2, n // 2
    # the union's rank-r value has rank r - m .. r among the rows: the median's candidates
    mlo, mhi = max(0, r1 - m), min(nA, r2 + 1)
    wM = mhi - mlo
    mbuf = np.empty((C, wM + m), dtype=np.float32)
    mbuf[:, :wM] = rows[:, mlo:mhi]
    ch = np.arange(C)
    # where the MAD will land: around center +- MAD of the known rows alone
    a1, a2 = (nA - 1) // 2, nA // 2
    c0 = ((rows[:, a1] + rows[:, a2]) / np.float32(2)).astype(np.float32)
    t0 = np.partition(np.abs(rows - c0[:, None]), a2, axis=1)[:, a2]
    p_lo = (rows < (c0 - t0)[:, None]).sum(axis=1)
    p_hi = (rows <= (c0 + t0)[:, None]).sum(axis=1)
    # candidates each side of each expected edge: the m new values move the MAD's rank by
    # at most m and the center by at most m / 2 ranks (a miss is caught, see _merge_recent)
    half = 12 + (3 * m) // 2
    part = 2 * half
    zeros = np.zeros(C, dtype=np.int64)
    if nA <= 2 * part + 2:  # a short window: every value is a candidate, nothing to check
        Bw, band = nA, rows
        inner_count = zeros
        s_lo, s_hi, part = zeros, zeros + nA, nA  # one part covering the row
        edges_idx = np.zeros((C, 4), dtype=np.int64)
        has = np.zeros((C, 4), dtype=bool)
    else:
        s_lo = np.clip(p_lo - half, 0, nA - 2 * part)
        s_hi = np.clip(p_hi - half, s_lo + part, nA - part)  # after the low part: K >= 0
        Bw = 2 * part
        idx = np.concatenate([s_lo[:, None] + np.arange(part), s_hi[:, None] + np.arange(part)], axis=1)
        band = rows[ch[:, None], idx]
        inner_count = s_hi - (s_lo + part)
        # the inner run's two ends, the nearest outer value on each side
        edges_idx = np.stack([s_lo + part, s_hi - 1, s_lo - 1, s_hi + part], axis=1)
        has = np.stack([inner_count > 0, inner_count > 0, s_lo > 0, s_hi + part < nA], axis=1)
    j1 = r1 - inner_count  # the answer's rank among a channel's candidates
    # one column for every channel: pad each row with (J - j1) zero distances, so that its
    # answer has the same rank J in all rows (the padding is usually empty)
    J = int(np.clip(j1, 0, None).max())
    pad = int(J - np.clip(j1, 0, None).min())
    L = Bw + m + pad
    xbuf = np.full((C, L + 4), _FAR, dtype=np.float32)  # band | recent | padding | 4 edges
    xbuf[:, :Bw] = band
    xbuf[:, L:] = np.where(has, rows[ch[:, None], np.clip(edges_idx, 0, nA - 1)], 0)
    pad_mask = (np.arange(pad)[None, :] >= (J - j1)[:, None]).astype(np.float32)  # 0: a zero
    # the edge distances' check (_merge_recent): inner ends no farther than the answer,
    # outer values no nearer; a missing one is clipped to where it always passes
    inf = np.float32(np.inf)
    edge_lo = np.where(has, np.float32(0), np.array([-inf, -inf, inf, inf], np.float32)).astype(np.float32)
    edge_hi = np.where(has, inf, np.array([-inf, -inf, inf, inf], np.float32)).astype(np.float32)
    # the new center lies in [rows[mlo], rows[mhi - 1]]: the outer values must lie beyond it
    # on their side, so that the nearest one is the closest of its side
    sure = ((j1 >= 0) & (r2 - inner_count < Bw + m)
            & ((s_lo == 0) | (s_lo <= mlo + 1) & (mlo == r1 - m))
            & ((s_hi + part >= nA) | (s_hi + part >= mhi - 1) & (mhi == r2 + 1)))
    return _Sorted(rows=rows, m=m, recent_slots=recent_slots, r1=r1, r2=r2, mbuf=mbuf, wM=wM,
                   i1=r1 - mlo, i2=r2 - mlo, xbuf=xbuf, dbuf=np.empty_like(xbuf), Bw=Bw, L=L, J=J,
                   pad_mask=pad_mask, edge_lo=edge_lo, edge_hi=edge_hi,
                   check=np.empty((C, 4), dtype=np.float32), sure=sure, all_sure=bool(sure.all()))


def _merge_recent(s: _Sorted, recent: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(center, mad) of the rows plus `recent` (m, C), exactly as np.median gives them.

    Median: the union's middle ranks lie among rows[:, r1 - m : r2 + 1] and the recent
    values. MAD: distances to the new center of the band values, the recent values and the
    four edge values. With K rows strictly inside the band (nearer the center), the rank-r
    distance is the (r - K)-th candidate, provided every inner row is no farther than it
    and every outer row no nearer; distance is V-shaped along a sorted row, so the inner
    run's two ends and the outer value next to each band part decide that. About 20
    numpy operations on (C, ~100) arrays, all channels at once, none allocating much.
    """
    m, Bw, L, J = s.m, s.Bw, s.L, s.J
    M = s.mbuf
    M[:, s.wM:] = recent.T
    M.sort(axis=1)  # (sorting rows this short beats np.partition's per-row cost)
    # np.median of float32: the middle value, or the two middle values summed and halved
    # (summed from +0.0 as numpy's mean sums: a median is never -0.0)
    zero = np.float32(0)
    center = zero + M[:, s.i1] if s.i1 == s.i2 else (zero + M[:, s.i1] + M[:, s.i2]) / np.float32(2)
    X, D = s.xbuf, s.dbuf
    X[:, Bw:Bw + m] = recent.T
    np.subtract(X, center[:, None], out=D)
    np.abs(D, out=D)
    if s.pad_mask.shape[1]:
        np.multiply(D[:, Bw + m:L], s.pad_mask, out=D[:, Bw + m:L])
    candidates = D[:, :L]
    J2 = J + (s.r2 - s.r1)
    candidates.sort(axis=1)
    v1, v2 = candidates[:, J], candidates[:, J2]
    mad = zero + v1 if s.r1 == s.r2 else (zero + v1 + v2) / np.float32(2)
    E = s.check
    _clip_ufunc(D[:, L:], s.edge_lo, s.edge_hi, E)  # missing edges -> -inf / +inf
    np.subtract(E[:, :2], v1[:, None], out=E[:, :2])  # inner - answer: <= 0
    np.subtract(v2[:, None], E[:, 2:], out=E[:, 2:])  # answer - outer: <= 0
    if not (s.all_sure and E.max() <= 0):
        ok = (E.max(axis=1) <= 0) & s.sure
        for i in np.flatnonzero(~ok):  # as the core does it, for that channel alone
            data = np.concatenate([s.rows[i], recent[:, i]])
            mad[i] = np.median(np.abs(data - center[i]))
    return center, mad


def _merged_bounds(scale: float, zero_point: int, qmin: int, qmax: int,
                   clip: float) -> tuple[np.float32, np.float32] | None:
    """One clip for the normaliser's +-clip and the integer range, or None if they do not meet.

    QuantParams.quantize(z) = clip(rint(h(z)), qmin, qmax) with h(z) = z / scale + zero_point
    in float32, and the normaliser gives z = clip(z', -clip, clip). h and rint never
    decrease, so G = rint o h satisfies G(clip(z', a, b)) = clip(G(z'), G(a), G(b)), and
    rint(clip(y, lo, hi)) = clip(rint(y), lo, hi) for whole lo, hi: the result is
    rint(clip(h(z'), lo, hi)) with lo = max(G(-clip), qmin), hi = min(G(clip), qmax).
    """
    z = np.array([-clip, clip], dtype=np.float32)
    g = np.rint(np.add(np.divide(z, np.float32(scale)), np.float32(zero_point)))
    lo, hi = max(float(g[0]), qmin), min(float(g[1]), qmax)
    return (np.float32(lo), np.float32(hi)) if lo <= hi else None


@dataclass
class EdgeNormaliser(Normaliser):
    """Normaliser(n_channels, config) whose robust refresh is prepared off the decision path.

    Call prepare() in idle time (after a batch's decisions are written); process() is
    unchanged. `fast_refreshes` / `slow_refreshes` count which path each refresh took
    (`exact_refreshes`: prepared completely, nothing left to merge at the boundary).
    """

    lead_samples: int = 64  # prepare once the boundary is at most this many samples ahead
    fast_refreshes: int = field(default=0, init=False)
    slow_refreshes: int = field(default=0, init=False)
    exact_refreshes: int = field(default=0, init=False)
    crossing_blocks: int = field(default=0, init=False)  # boundary blocks on the kernel's short path
    inline_reasons: dict = field(default_factory=dict, init=False)  # why a refresh ran inline

    def __post_init__(self) -> None:
        self._pool = concurrent.futures.ThreadPoolExecutor(
            max_workers=1, thread_name_prefix="normaliser-prepare", initializer=_below_caller_priority)
        self._quant: tuple | None = None
        self._qvec: np.ndarray | None = None  # the same, as the kernel's 7 float32 values
        self._kernel = KERNEL  # None: the numpy path (tests set it to compare both)
        self._last_n = 0  # size of the last block processed
        C = self.n_channels
        self._scratch = np.zeros((_TILE_ROWS, C), dtype=np.float32)
        self._ones = np.ones(_TILE_ROWS * C, dtype=np.float32)  # has_nan's dot product
        self._center_rows = np.zeros((_TILE_ROWS, C), dtype=np.float32)
        self._inv_rows = np.zeros((_TILE_ROWS, C), dtype=np.float32)
        self._rows_of: tuple = (None, None)  # the (center, inv_scale) the row copies hold
        self._n_rows, self._n_views = 0, ()
        self._tiles, self._rows_filled = (self._center_rows, self._inv_rows), 0
        self._unstored = None  # (slot, block) not yet in the statistics' ring
        self._fast_from, self._fast_to = 1, 0  # process_int8's fast path holds for t in here
        self._R, self._W = self.config.refresh_samples, self.config.window_samples
        super().__post_init__()

    def reset(self) -> None:
        super().reset()
        self._ring.fill(0)  # touch every page now, not on the decision path 10 s from here
        self._fast_from, self._fast_to = 1, 0
        self._unstored = None
        self._prepared: _Prepared | None = None

    def close(self) -> None:
        self._pool.shutdown(wait=False, cancel_futures=True)

    # ---- the quantised output ----------------------------------------------------------
    def set_output_quant(self, quant) -> None:
        """Quantise to `quant` (a QuantParams: the model's input tensor) in process_int8()."""
        scale, zp = np.float32(quant.scale), np.float32(quant.zero_point)
        merged = _merged_bounds(quant.scale, quant.zero_point, quant.qmin, quant.qmax,
                                self.config.clip)
        clip = np.float32(self.config.clip)
        self._quant = (np.array(scale), np.array(zp),
                       np.array(merged[0] if merged else np.float32(quant.qmin)),
                       np.array(merged[1] if merged else np.float32(quant.qmax)),
                       None if merged else (np.array(-clip), np.array(clip)))
        self._qvec = np.array([scale, zp, self._quant[2], self._quant[3], -clip, clip,
                               0.0 if merged else 1.0], dtype=np.float32)

    def process(self, x: np.ndarray) -> np.ndarray:
        self.flush()
        self._last_n = len(x)
        self._fast_from, self._fast_to = 1, 0
        return super().process(x)

    def has_nan(self, x: np.ndarray) -> bool:
        """Does x (float32) hold a NaN? One kernel call, or one dot product with ones (NaN
        there also comes from +inf and -inf together: then np.isnan confirms)."""
        k = self._kernel
        if k is not None:
            try:
                return k.has_nan(x)
            except (BufferError, ValueError, TypeError):  # not C-contiguous float32
                pass
        flat = x.reshape(-1)
        if flat.size > self._ones.size or not x.flags.c_contiguous:
            return bool(np.isnan(x).any())
        return math.isnan(flat.dot(self._ones[:flat.size])) and bool(np.isnan(x).any())

    def _quantised(self, x: np.ndarray, buf: np.ndarray, center, inv, out: np.ndarray) -> None:
        """out = the model's int8 of the normalised x, computed in buf (no allocation): the
        core's (x - center) * inv_scale and clip, then quantise as QuantParams does.

        The compiled kernel does the same float32 steps, element by element, in one call; it
        declines (False) a block holding NaN and refuses (ValueError, BufferError) a layout it
        does not take (not C-contiguous, a broadcast filler): both go the numpy way, so every
        input gives the numpy bytes."""
        if self._kernel is not None:
            try:
                if self._kernel.quantise(x, center, inv, self._qvec, out):
                    return
            except (BufferError, ValueError, TypeError):
                pass
        scale, zp, lo, hi, zclip = self._quant
        np.subtract(x, center, buf)
        np.multiply(buf, inv, buf)
        if zclip is not None:
            _clip_ufunc(buf, zclip[0], zclip[1], buf)
        np.divide(buf, scale, buf)
        np.add(buf, zp, buf)
        _clip_ufunc(buf, lo, hi, buf)
        np.rint(buf, buf)
        out[:] = buf  # whole numbers in range: the cast is exact

    def steady_int8(self, x: np.ndarray, out: np.ndarray) -> bool:
        """process_int8(x, out) of the steady state, or False with nothing done.

        Takes the block only where process_int8 takes its fast path (inside one refresh
        period, same block size as the last) and x (float32) holds no NaN; the NaN check is
        the kernel's own pass. The caller then handles the block its general way."""
        t = self.samples_seen
        n = x.shape[0]
        if not (self._fast_from <= t and t + n <= self._fast_to and n == self._n_rows):
            return self._crossing_int8(x, out, t, n)
        k = self._kernel
        done = None
        if k is not None:
            try:  # one row of center and 1/scale, broadcast (the per-row copies are numpy's)
                done = k.quantise(x, self.center, self.inv_scale, self._qvec, out)  # False: NaN
            except (BufferError, ValueError, TypeError):  # a layout or type it does not take
                done = None
            if done is False:
                return False
        if done is None:
            if self.has_nan(x):
                return False
            self._quantised(x, *self._n_views, out)  # the current statistics (see _cut_rows)
        self._last_n = n
        if self._unstored is not None:
            self.flush()
        self._unstored = (t % self._W, x)
        self.samples_seen = t + n
        return True

    def _crossing_int8(self, x: np.ndarray, out: np.ndarray, t: int, n: int) -> bool:
        """steady_int8 of a block that crosses or starts on a refresh boundary, or False with
        nothing done.

        The general loop's steps, with the kernel and without its generality: the samples
        before the boundary with the statistics they belong to, the refresh (prepared: an
        assignment or the kernel's merge), the rest with the new statistics. Only for a block
        of the steady size whose boundary ends the fast span, no NaN in it, no wrap of the
        statistics' ring after the boundary."""
        k = self._kernel
        R, W = self._R, self._W
        b = self._fast_to  # the boundary, when the fast span ends on one (or the block starts on it)
        split = b - t
        if (k is None or n != self._n_rows or not self._fast_from <= t <= b < t + n
                or b % R or b % W + n - split > W or self.has_nan(x)):
            return False
        if split:
            try:
                if not k.quantise(x[:split], self.center, self.inv_scale, self._qvec, out[:split]):
                    return False
            except (BufferError, ValueError, TypeError):  # a layout or type it does not take
                return False
        self.flush()
        if split:
            slot = t % W  # the fast span ends at a wrap of the statistics' ring at the latest
            self._ring[slot:slot + split] = x[:split]
            self.samples_seen = b
        self._refresh()  # the samples the merge reads are all in the ring now
        self._quantised(x[split:], self._scratch[:n - split], self.center, self.inv_scale, out[split:])
        self._unstored = (b % W, x[split:])  # stored in idle time
        self.samples_seen = t + n
        self._last_n = n
        self._open_fast_span(n)
        self.crossing_blocks += 1
        return True

    def _open_fast_span(self, n: int) -> None:
        """From samples_seen on, blocks of n take the fast path up to the next refresh (or
        wrap of the statistics' ring)."""
        t, R, W = self.samples_seen, self._R, self._W
        self._cut_rows(n)
        k = t // R
        self._fast_from = k * R + 1 if t % R else t + 1  # a refresh is due at k * R
        self._fast_to = min((k + 1) * R, (t // W + 1) * W)

    def process_int8(self, x: np.ndarray, out: np.ndarray) -> None:
        """x: (n, C) float32 uV -> out: (n, C) int8, equal to quant.quantize(self.process(x))
        bit for bit (+-inf as the core clips it; NaN has no int8 value: the caller keeps it
        out). A block of up to 64 samples inside one refresh period allocates nothing."""
        if self.steady_int8(x, out):  # the steady state (declines NaN: computed below)
            return
        n = x.shape[0]
        self._last_n = n
        self.flush()
        R, W = self._R, self._W
        pos = 0
        while pos < n:  # the core's loop: a refresh at each boundary inside the block
            t = self.samples_seen
            if t > 0 and t % R == 0:
                self._refresh()
            take = min(n - pos, (t // R + 1) * R - t)
            seg = x[pos:pos + take]
            if t < R:  # warming up: no statistics yet (NaN in the core), never decided on
                out[pos:pos + take] = 0
            else:
                if take <= _TILE_ROWS:
                    self._cut_rows(take)
                    buf, center, inv = self._n_views
                else:  # a long block (start-up, a filled gap): broadcast, allocate
                    buf, center, inv = np.empty_like(seg), self.center, self.inv_scale
                self._quantised(seg, buf, center, inv, out[pos:pos + take])
            slot = t % W
            first = min(take, W - slot)
            self._ring[slot:slot + first] = seg[:first]
            if first < take:
                self._ring[: take - first] = seg[first:]
            self.samples_seen = t + take
            pos += take
        t = self.samples_seen
        if 0 < n <= _TILE_ROWS and t >= R:  # where the next blocks of n can take the fast path
            self._open_fast_span(n)

    def flush(self) -> None:
        """Store the block process_int8 left for idle time in the statistics' ring.

        The block's array is held until then, not copied: it must not change before the
        next process call, prepare() or flush() (SampleBlock data never does)."""
        if self._unstored is not None:
            slot, x = self._unstored
            self._unstored = None
            self._ring[slot:slot + len(x)] = x

    def _cut_rows(self, n: int) -> None:
        """Views of n rows of the scratch and of per-row copies of center and 1/scale
        (same-shape operands: a ufunc on them costs half a broadcasting one)."""
        self._fast_from, self._fast_to = 1, 0  # until process_int8 says where it holds
        if self._kernel is not None:  # the kernel broadcasts one row: nothing to copy
            self._n_rows = n
            self._n_views = (self._scratch[:n], self.center, self.inv_scale)
            return
        current = self._rows_of[0] is self.center and self._rows_of[1] is self.inv_scale
        if current and n == self._n_rows:
            return
        if not current or n > self._rows_filled:
            tiles = self._tiles = (self._center_rows, self._inv_rows)
            tiles[0][:n] = self.center
            tiles[1][:n] = self.inv_scale
            self._rows_of, self._rows_filled = (self.center, self.inv_scale), n
        c, i = self._tiles
        self._n_rows = n
        self._n_views = (self._scratch[:n], c[:n], i[:n])

    def _adopt_rows(self, center_rows: np.ndarray, inv_rows: np.ndarray) -> None:
        """Take per-row copies the helper made of the statistics just assigned."""
        n = len(center_rows)
        self._tiles = (center_rows, inv_rows)
        self._rows_of, self._rows_filled = (self.center, self.inv_scale), n
        self._n_rows = n
        self._n_views = (self._scratch[:n], center_rows, inv_rows)

    # ---- ahead of the boundary -------------------------------------------------------------
    def _decimated_times(self, boundary: int, stop: int) -> np.ndarray:
        """Sample indices t in [max(0, boundary - W), stop) with t % decimate == 0."""
        W, k = self.config.window_samples, self.config.decimate
        start = max(0, boundary - W)
        first = -(-start // k) * k
        return np.arange(first, stop, k)

    def prepare(self) -> bool:
        """Start preparing the next refresh if its boundary is near; True if started.

        The helper sorts the window's known samples once the boundary is `lead_samples`
        ahead. If a block then ends exactly on the boundary, every sample is known: the
        statistics are finished here (a merge of the few samples that came since, this
        thread, idle time), and the refresh itself is an assignment.
        """
        self.flush()
        cfg = self.config
        if cfg.method != "robust":
            return False
        t = self.samples_seen
        R = self._R
        # a boundary reached exactly is refreshed at the start of the next process() call
        boundary = t if t > 0 and t % R == 0 else (t // R + 1) * R
        if boundary - t > self.lead_samples:
            return False
        p = self._prepared
        fallback = None
        if p is not None and p.boundary == boundary:
            if t == boundary and isinstance(p.work, (_Sorted, _SortedRows)):
                self._finish(p)
                return False
            # the next block of this size crosses the boundary: with the kernel, prepare again
            # with every sample but that block's known, so the boundary merges a frame's worth
            # of values instead of the lead's; the first preparation stays the fallback
            if not (self._kernel is not None and isinstance(p.work, _SortedRows)
                    and p.fallback is None and p.prepared_at < t < boundary < t + self._last_n):
                return False
            fallback = p
        W = cfg.window_samples
        known = self._decimated_times(boundary, t) % W
        recent = self._decimated_times(boundary, boundary)[len(known):] % W
        # the helper reads these slots while this thread writes later samples: they are not
        # overwritten before the boundary (window >= refresh), and the refresh uses the
        # result only if the helper finished before the boundary's first sample was written
        prepared = self._prepared = _Prepared(boundary, t, fallback=fallback)
        prepared.future = self._pool.submit(_prepare_into, prepared, self._ring, known, len(recent),
                                            recent, cfg, self._last_n, self._kernel)
        return True

    def _finish(self, p: _Prepared) -> None:
        """Every sample of p's window has arrived: its final statistics, now (idle time)."""
        merged = self._merged_stats(p.work)
        if isinstance(merged, str):
            p.work = merged
            return
        center, inv_scale = merged
        n = self._last_n
        rows = ((np.repeat(center[None], n, axis=0), np.repeat(inv_scale[None], n, axis=0))
                if 0 < n <= _TILE_ROWS and self._kernel is None else (None, None))
        p.work = _Exact(center, inv_scale, *rows)

    def _merged_stats(self, work: _Sorted | _SortedRows) -> tuple[np.ndarray, np.ndarray] | str:
        """(center, 1 / scale) of the prepared rows plus the samples still to come (now in
        the ring), exactly as the core computes them, or why not (a non-finite sample: the
        core's own arithmetic then)."""
        if isinstance(work, _SortedRows):  # made only where KERNEL is built
            # the kernel floors in float32, as numpy does with a Python number (not a numpy float64)
            floor = self.config.floor_uv
            if self.config.scale_floor != "constant" or type(floor) not in (float, int):
                floor = None
            args = (work.rows, self._ring, work.recent_slots, work.center, work.out, work.band,
                    work.start)
            if not KERNEL.merge_stats(*args, *(() if floor is None else (float(floor),))):
                return "non-finite samples in the window"
            # with a constant floor the kernel applied it (out = 1 / scale); else out = MAD
            return (work.center, work.out) if floor is not None else self._stats_from(work.center, work.out)
        recent = self._ring[work.recent_slots]
        if not np.isfinite(recent).all():
            return "non-finite samples in the window"
        return self._stats_from(*_merge_recent(work, recent))

    def _stats_from(self, center: np.ndarray, mad: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(center, 1 / scale) from the median and MAD: exactly the core's arithmetic (float32)."""
        scale = 1.4826 * mad
        center = center.astype(np.float32)
        return center, inverse_scale(scale, center, self.config)  # the core's floor

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
        p, self._prepared = self._prepared, None
        if p is not None and p.work is None and p.fallback is not None:  # not finished in time
            p = p.fallback
        why = self._apply(p) if p is not None and p.boundary == self.samples_seen else "not prepared"
        if why is not None:
            self._inline_refresh(why)

    def _apply(self, p: _Prepared) -> str | None:
        """Take the prepared statistics (None), or say why they cannot be used."""
        work = p.work  # set by the helper as its last step
        if work is None:
            return "preparation not finished"
        if isinstance(work, str):
            return work
        if isinstance(work, _Exact):  # an assignment: everything was done in idle time
            self.center, self.inv_scale = work.center, work.inv_scale
            if work.center_rows is not None:  # the next block's operands, made ahead too
                self._adopt_rows(work.center_rows, work.inv_rows)
            self.exact_refreshes += 1
        else:
            merged = self._merged_stats(work)
            if isinstance(merged, str):
                return merged
            self.center, self.inv_scale = merged
        self.fast_refreshes += 1
        return None


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
