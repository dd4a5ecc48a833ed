"""Probes: folded weights equal scikit-learn's pipeline, the exact row-space speed-up,
Table 1 on the tiny dataset, label efficiency, and the Mantel test."""

from __future__ import annotations

import numpy as np
import pytest

from phosphene.train.diagnostics import mantel_test, run_diagnostics
from phosphene.train.probe import (fit_probe, fold_probe, format_table, load_probe,
                                   plot_label_efficiency, probe_task, save_probe)


def _data(n=80, d=20, seed=0):
    rng = np.random.default_rng(seed)
    X = rng.standard_normal((n, d)) * rng.uniform(0.1, 10, d) + rng.uniform(-5, 5, d)
    y = (X[:, 0] / 3 + X[:, 1] + rng.standard_normal(n) > 0).astype(int)
    return X, y


def _sigmoid(z):
    return 1 / (1 + np.exp(-z))


@pytest.mark.parametrize("d, n_components", [(20, None), (300, None), (300, 10)])
def test_folded_probe_gives_sklearn_probabilities(d, n_components):
    X, y = _data(d=d)
    pipe = fit_probe(X, y, n_components=n_components)
    w, b = fold_probe(pipe)
    assert w.shape == (d,)
    X_new, _ = _data(n=30, d=d, seed=1)
    np.testing.assert_allclose(_sigmoid(X_new @ w + b), pipe.predict_proba(X_new)[:, 1],
                               rtol=1e-6, atol=1e-9)


def test_row_space_projection_is_exact():
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    from phosphene.train.probe import RowSpace

    X, y = _data(n=40, d=500)
    X_new, _ = _data(n=25, d=500, seed=2)
    plain = make_pipeline(StandardScaler(), LogisticRegression(C=0.05, tol=1e-10, max_iter=10000))
    fast = make_pipeline(StandardScaler(), RowSpace(),
                         LogisticRegression(C=0.05, tol=1e-10, max_iter=10000))
    np.testing.assert_allclose(plain.fit(X, y).predict_proba(X_new),
                               fast.fit(X, y).predict_proba(X_new), atol=1e-5)


def test_one_class_training_split_is_a_clear_error():
    X, _ = _data()
    with pytest.raises(ValueError, match="only one class"):
        fit_probe(X, np.ones(len(X), dtype=int))


def _mean_rate_encoder(x):
    """A fixed 'encoder' for tests: per-electrode mean of the window, (N, T, C) -> (N, C)."""
    return x.mean(axis=1)


def test_probe_task_table_curve_and_saved_probe(tiny_dataset, tmp_path):
    r = probe_task(tiny_dataset, _mean_rate_encoder, "psychometric", curve=True,
                   fractions=(0.25, 1.0), repeats=2)
    assert set(r["features"]) == {"raw", "pca", "latent"}
    for m in r["features"].values():
        assert 0.0 <= m["balanced_accuracy"] <= 1.0 and m["C"] > 0
    assert r["features"]["raw"]["dim"] == 96 * 128
    assert r["features"]["latent"]["dim"] == 96 == r["latent_dim"]
    assert r["features"]["pca"]["dim"] == min(96, r["n_train"] - 1)
    assert r["n_train"] + r["n_test"] == r["n_trials"] and r["n_test"] > 0
    assert r["ideal_observer"] == tiny_dataset.ideal_observer["psychometric"]
    assert [p["fraction"] for p in r["curve"]["latent"]] == [0.25, 1.0]
    assert r["curve"]["latent"][-1]["mean"] == r["features"]["latent"]["balanced_accuracy"]
    table = format_table([r], n_channels=96, window_samples=128)
    assert "raw MUA, flattened (96 x 128 = 12288-d)" in table and "ideal observer" in table
    plot_label_efficiency(r, tmp_path / "curve.png")
    assert (tmp_path / "curve.png").read_bytes()[:4] == b"\x89PNG"

    doc = save_probe(tmp_path / "probe.json", r)
    loaded = load_probe(tmp_path / "probe.json")
    assert loaded["threshold"] == 0.5 and loaded["task"] == "psychometric"
    assert loaded["weights"].shape == (96,) and doc["latent_dim"] == 96


def test_mantel_test_finds_shared_structure_and_not_noise():
    rng = np.random.default_rng(0)
    pts = rng.uniform(0, 1, (12, 2))
    dist = np.sqrt(((pts[:, None] - pts[None]) ** 2).sum(-1))
    same = mantel_test(dist, dist * 3 + 1, permutations=199)
    assert same["r"] == pytest.approx(1.0) and same["p_value"] == pytest.approx(1 / 200)
    other = rng.uniform(0, 1, (12, 2))
    noise = mantel_test(dist, np.sqrt(((other[:, None] - other[None]) ** 2).sum(-1)),
                        permutations=199)
    assert noise["p_value"] > 0.05
    with pytest.raises(ValueError, match="square"):
        mantel_test(dist, dist[:5, :5])


def test_diagnostics_write_plots_and_the_spatial_test(tiny_dataset, tmp_path):
    report = run_diagnostics(tiny_dataset, _mean_rate_encoder, tmp_path, method="pca",
                             permutations=99)
    for task in ("psychometric", "threshold"):
        assert (tmp_path / f"latents_{task}.png").read_bytes()[:4] == b"\x89PNG"
    m = report["mantel_latent"]
    assert m["n_items"] == len(m["electrodes"]) >= 3 and 0 < m["p_value"] <= 1
    assert (tmp_path / "diagnostics.json").is_file()
