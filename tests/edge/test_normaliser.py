"""EdgeNormaliser (robust refresh prepared ahead of time) gives the core Normaliser's bytes."""

from __future__ import annotations

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st
from streams import stream_through

from phosphene.edge.normaliser import EdgeNormaliser
from phosphene.signal import Normaliser, NormaliserConfig


@settings(deadline=None, max_examples=25)
@given(seed=st.integers(0, 2**31), quantised=st.booleans(), wide=st.booleans(),
       frame=st.sampled_from([5, 16, 33]), lead=st.sampled_from([8, 64, 200]))
def test_edge_normaliser_equals_core(seed, quantised, wide, frame, lead):
    rng = np.random.default_rng(seed)
    C, T = 6, 1700
    x = rng.lognormal(1.5, 0.6, (T, C)).astype(np.float32)
    x[:, 0] = 0.2  # a dead channel: MAD 0 -> the floor
    x[:, 2] = np.rint(rng.normal(10, 1, T)) * np.float32(0.02)  # few values, long runs of ties
    if wide:  # a channel spanning decades: the fast path may hand over to the core's refresh
        x[:, 1] = rng.lognormal(1.5, 2.0, T)
    if quantised:  # wire values are int16 * scale: many ties
        x = (np.rint(x / 0.5) * np.float32(0.5)).astype(np.float32)
    cfg = NormaliserConfig(window_s=0.8, refresh_s=0.2)
    chunks = [frame] * (T // frame) + ([T % frame] if T % frame else [])
    expected = Normaliser(C, cfg).process(x)
    edge = EdgeNormaliser(C, cfg, lead_samples=lead)
    got = stream_through(edge, x, chunks)
    assert np.array_equal(got, expected, equal_nan=True)
    if lead >= frame and not wide:  # every refresh could be prepared one frame ahead: the fast path ran
        # (a lead as long as the refresh period leaves the first refresh too few known samples)
        refreshes = T // cfg.refresh_samples
        assert edge.fast_refreshes >= refreshes - (lead >= cfg.refresh_samples)
        assert edge.fast_refreshes + edge.slow_refreshes == refreshes


def test_edge_normaliser_paper_config_fast_path_and_fallbacks():
    rng = np.random.default_rng(3)
    C = 96
    x = rng.lognormal(1.5, 0.6, (12_500, C)).astype(np.float32)
    cfg = NormaliserConfig()
    expected = Normaliser(C, cfg).process(x)
    edge = EdgeNormaliser(C, cfg)
    assert np.array_equal(stream_through(edge, x, [16] * (len(x) // 16) + [len(x) % 16]), expected,
                          equal_nan=True)
    assert edge.fast_refreshes == 12 and edge.slow_refreshes == 0
    # never prepared (or the z-score method): the core refresh runs, same output
    lazy = EdgeNormaliser(C, cfg)
    assert np.array_equal(stream_through(lazy, x, [500] * 25, prepare=False), expected, equal_nan=True)
    assert lazy.fast_refreshes == 0 and lazy.slow_refreshes == 12
    z = NormaliserConfig(method="zscore")
    assert np.array_equal(stream_through(EdgeNormaliser(C, z), x, [16] * 781 + [4]),
                          Normaliser(C, z).process(x), equal_nan=True)
