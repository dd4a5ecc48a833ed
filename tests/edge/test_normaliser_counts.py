"""Binned counts: the edge's EdgeNormaliser floors the scale exactly as the core does.

The Poisson scale floor depends on each channel's centre; core and edge both take it from
phosphene.signal.inverse_scale, so the bytes agree on count streams (held rates: long runs
of ties, sparse units whose spread is 0). The counts normaliser itself
(NormaliserConfig.for_counts: z-score method) refreshes through the core's own code on the
edge; the robust method with the same floor goes through the prepared fast path, which
these tests check too, so the floor is exercised on both of the edge's paths.
"""

from __future__ import annotations

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st
from streams import stream_through

from phosphene.edge.normaliser import EdgeNormaliser
from phosphene.signal import Normaliser, NormaliserConfig


def _held_counts(rng, T: int, C: int, bin_ms: int, rates_hz: np.ndarray) -> np.ndarray:
    """Poisson counts per bin at the given rates, as the importer stores them: a rate in
    spikes/s held for bin_ms samples at 1 kHz."""
    n_bins = -(-T // bin_ms)
    counts = rng.poisson(rates_hz[None, :] * bin_ms / 1000.0, (n_bins, C))
    return np.repeat(counts * np.float32(1000.0 / bin_ms), bin_ms, axis=0)[:T].astype(np.float32)



@settings(deadline=None, max_examples=20)
@given(seed=st.integers(0, 2**31), bin_ms=st.sampled_from([10, 20, 50]),
       frame=st.sampled_from([5, 16, 33]), lead=st.sampled_from([8, 64]),
       method=st.sampled_from(["zscore", "robust"]))
def test_edge_poisson_floor_equals_core(seed, bin_ms, frame, lead, method):
    rng = np.random.default_rng(seed)
    C, T = 7, 1700
    rates = np.array([0.2, 1.0, 3.0, 10.0, 30.0, 80.0, 0.0])  # sparse ... busy, and a silent unit
    x = _held_counts(rng, T, C, bin_ms, rates)
    cfg = NormaliserConfig.for_counts(bin_ms, window_s=0.8, refresh_s=0.2, method=method)
    expected = Normaliser(C, cfg).process(x)
    edge = EdgeNormaliser(C, cfg, lead_samples=lead)
    got = stream_through(edge, x, [frame] * (T // frame) + ([T % frame] if T % frame else []))
    assert np.array_equal(got, expected, equal_nan=True)
    if method == "robust":
        assert edge.fast_refreshes > 0  # the prepared path ran, not only the core's refresh
    # and the floor did its job: the silent and the sparse units never sit at the clip
    valid = expected[cfg.warmup_samples:]
    assert np.isfinite(valid).all()
    assert (np.abs(valid) < cfg.clip).all()


def test_edge_counts_normaliser_paper_window():
    rng = np.random.default_rng(11)
    C, bin_ms = 52, 50
    rates = np.exp(rng.uniform(np.log(0.3), np.log(60.0), C))
    x = _held_counts(rng, 12_500, C, bin_ms, rates)
    chunks = [16] * (len(x) // 16) + [len(x) % 16]
    counts = NormaliserConfig.for_counts(bin_ms)  # what a binned import records
    expected = Normaliser(C, counts).process(x)
    edge = EdgeNormaliser(C, counts)
    assert np.array_equal(stream_through(edge, x, chunks), expected, equal_nan=True)
    assert edge.slow_refreshes == 12  # z-score: the core's own refresh, on the edge too
    # robust statistics with the same floor: the prepared fast path, same bytes as the core
    robust = NormaliserConfig.for_counts(bin_ms, method="robust")
    edge = EdgeNormaliser(C, robust)
    assert np.array_equal(stream_through(edge, x, chunks), Normaliser(C, robust).process(x), equal_nan=True)
    assert edge.fast_refreshes == 12 and edge.slow_refreshes == 0
    # the MUA normaliser on the same counts saturates; the counts one does not
    mua = Normaliser(C, NormaliserConfig()).process(x)[1000:]
    assert (np.abs(mua) >= 8).mean() > 0.05
    assert (np.abs(expected[1000:]) >= 8).mean() < 1e-3
