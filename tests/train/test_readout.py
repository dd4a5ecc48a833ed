"""Readouts of the teacher's tokens: pooling, resting whitening, save/load, the choice."""

from __future__ import annotations

import numpy as np
import pytest

from phosphene.train.readout import (
    READOUTS,
    fit_readouts,
    load_chosen_readout,
    load_readouts,
    pool_tokens,
    save_chosen_readout,
    save_readouts,
    whitening,
)

GEOMETRY = {"n_registers": 2, "n_channels": 6, "n_time_patches": 4}


def _tokens(n=300, d=8, seed=0):
    rng = np.random.default_rng(seed)
    shared = rng.standard_normal((n, 1, d)) * 3.0  # what every token shares (the "state")
    own = rng.standard_normal((n, 2 + 6 * 4, d))
    return (shared + own).astype(np.float32)


def test_pooling_keeps_each_electrode_apart():
    t = np.zeros((1, 2 + 6 * 4, 3), np.float32)
    t[0, 2 + 4 * 4: 2 + 5 * 4] = 7.0  # all time patches of electrode 4
    pooled = pool_tokens(t, **GEOMETRY)
    assert pooled["electrode"].shape == (1, 6, 3)
    assert np.allclose(pooled["electrode"][0, 4], 7.0) and np.allclose(pooled["electrode"][0, :4], 0)
    assert np.allclose(pooled["mean"], 7.0 * 4 / 26)  # the global mean dilutes it 6.5-fold
    with pytest.raises(ValueError, match="tokens"):
        pool_tokens(t[:, 1:], **GEOMETRY)


def test_whitening_gives_identity_covariance_on_its_data():
    rng = np.random.default_rng(1)
    x = rng.standard_normal((4000, 5)) @ rng.standard_normal((5, 5)) + 10
    mean, W = whitening(x)
    z = (x - mean) @ W
    np.testing.assert_allclose(np.cov(z.T, bias=True), np.eye(5), atol=0.02)
    np.testing.assert_allclose(W, W.T)  # ZCA: each output stays tied to its own input


def test_electrode_readouts_are_white_at_rest_and_see_a_local_deviation():
    tokens = _tokens(n=3000)
    readouts = fit_readouts(tokens, **GEOMETRY)
    assert set(readouts) == set(READOUTS)
    pooled = pool_tokens(tokens, **GEOMETRY)
    for name in ("electrode_k1", "electrode_k4"):
        k = int(name[-1])
        z = readouts[name].apply(pooled)
        assert z.shape == (3000, 6 * k) == (3000, readouts[name].dim)
        assert np.allclose(z.mean(0), 0, atol=1e-9)
        assert np.diag(np.cov(z.T, bias=True)).mean() == pytest.approx(1.0, rel=0.15)
    # a deviation on one electrode stands out in its own features, not in the others'
    bumped = tokens.copy()
    direction = readouts["electrode_k1"].params["projection"][:, 0]
    bumped[:, 2 + 3 * 4: 2 + 4 * 4] += 2.0 * direction
    delta = readouts["electrode_k1"].apply(pool_tokens(bumped, **GEOMETRY)) - \
        readouts["electrode_k1"].apply(pooled)
    assert np.abs(delta[:, 3]).mean() > 3 * np.abs(np.delete(delta, 3, axis=1)).mean()


def test_readouts_round_trip_and_the_choice_is_recorded(tmp_path):
    readouts = fit_readouts(_tokens(), **GEOMETRY)
    save_readouts(tmp_path / "r.npz", readouts)
    again = load_readouts(tmp_path / "r.npz")
    pooled = pool_tokens(_tokens(n=20, seed=5), **GEOMETRY)
    for name in READOUTS:
        np.testing.assert_array_equal(again[name].apply(pooled), readouts[name].apply(pooled))
    save_chosen_readout(tmp_path / "probe", readouts, {"readout": "electrode_k4"})
    chosen = load_chosen_readout(tmp_path / "probe")
    assert chosen.name == "electrode_k4" and chosen.dim == 24
    (tmp_path / "old").mkdir()  # a probe directory from before readouts: the paper's mean
    assert load_chosen_readout(tmp_path / "old").name == "mean"
    with pytest.raises(ValueError, match="no probe directory"):
        load_chosen_readout(tmp_path / "missing")
