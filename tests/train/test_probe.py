"""Probes: folded weights equal scikit-learn's pipeline, the exact row-space speed-up,
Table 1 on the tiny dataset, label efficiency, and the Mantel test."""

from __future__ import annotations

import numpy as np
import pytest

from phosphene.cortex import ideal_balanced_accuracy
from phosphene.train.diagnostics import mantel_test, run_diagnostics
from phosphene.train.probe import (
    blocked_folds,
    cross_validate_C,
    fit_probe,
    fold_probe,
    format_table,
    load_probe,
    logit_scale,
    on_grid_edge,
    plot_label_efficiency,
    probe_task,
    save_probe,
)


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
    ev = tiny_dataset.evaluation()
    r = probe_task(tiny_dataset, _mean_rate_encoder, "psychometric", curve=True,
                   fractions=(0.25, 1.0), repeats=2)
    assert set(r["features"]) == {"raw", "pca", "electrode_mean", "electrode_mean_whitened",
                                  "latent"}
    for m in r["features"].values():
        assert 0.0 <= m["ci95"][0] <= m["balanced_accuracy"] <= m["ci95"][1] <= 1.0
        assert m["C"] > 0 and m["cv"]["n_folds"] >= 2
    assert r["features"]["raw"]["dim"] == 96 * 128
    assert r["features"]["latent"]["dim"] == 96 == r["latent_dim"]
    assert r["features"]["pca"]["dim"] == min(96, r["n_train"] - 1)
    # every labelled trial of the dataset trains; the evaluation set's trials evaluate
    assert r["evaluation"] == "evaluation set"
    assert r["n_train"] == len(tiny_dataset.task_trials("psychometric"))
    assert r["n_eval"] == len(ev.task_trials("psychometric")) == len(r["eval_p"]["latent"])
    te = ev.task_trials("psychometric")
    assert r["ideal_observer"] == ideal_balanced_accuracy(te.p_true, te.perceived)
    # paired comparisons exist for the latent against every baseline, on the same trials
    assert {f"latent-{b}" for b in ("raw", "pca", "electrode_mean", "electrode_mean_whitened")} \
        <= set(r["paired"])
    assert all(c["n"] == r["n_eval"] for c in r["paired"].values())
    assert [p["fraction"] for p in r["curve"]["latent"]] == [0.25, 1.0]
    assert r["curve"]["latent"][-1]["mean"] == r["features"]["latent"]["balanced_accuracy"]
    table = format_table([r], n_channels=96, window_samples=128)
    assert "raw MUA, flattened (96 x 128 = 12288-d)" in table and "ideal observer" in table
    assert "evaluation trials" in table
    plot_label_efficiency(r, tmp_path / "curve.png")
    assert (tmp_path / "curve.png").read_bytes()[:4] == b"\x89PNG"

    doc = save_probe(tmp_path / "probe.json", r)
    loaded = load_probe(tmp_path / "probe.json")
    assert loaded["threshold"] == 0.5 and loaded["task"] == "psychometric"
    assert loaded["weights"].shape == (96,) and doc["latent_dim"] == 96
    assert loaded["evaluation"]["p_teacher"] == r["eval_p"]["latent"]
    assert loaded["metrics"]["ci95"] == r["features"]["latent"]["ci95"]


def test_without_an_evaluation_set_the_paper_split_evaluates(tiny_dataset, tmp_path):
    import shutil

    from phosphene.dataset import Dataset

    copy = tmp_path / "noeval"
    shutil.copytree(tiny_dataset.path, copy, ignore=shutil.ignore_patterns("eval", "cache"))
    ds = Dataset.open(copy)
    assert ds.evaluation() is None
    r = probe_task(ds, _mean_rate_encoder, "threshold", feature_sets=("electrode_mean", "latent"))
    n_trials = len(ds.task_trials("threshold"))
    assert r["evaluation"].startswith("test split") and r["n_train"] + r["n_eval"] == n_trials


def test_blocked_folds_are_contiguous_in_time_within_each_session():
    session = np.array(["b"] * 7 + ["a"] * 10)
    onset = np.concatenate([np.arange(7)[::-1] * 100, np.arange(10) * 100])
    folds = blocked_folds(session, onset, k=3)
    for sid in ("a", "b"):
        idx = np.flatnonzero(session == sid)
        by_time = folds[idx[np.argsort(onset[idx])]]
        assert list(by_time) == sorted(by_time) and set(by_time) == {0, 1, 2}


def test_cv_picks_the_simplest_C_within_one_standard_error():
    rng = np.random.default_rng(0)
    X = rng.standard_normal((200, 5))
    y = (X[:, 0] + 0.5 * rng.standard_normal(200) > 0).astype(int)
    folds = np.repeat(np.arange(5), 40)
    cv = cross_validate_C(X, y, folds)
    i_best, i_chosen = cv["Cs"].index(cv["C_best"]), cv["Cs"].index(cv["C"])
    assert i_chosen <= i_best
    assert cv["cv_mean"][i_chosen] >= cv["cv_score_best"] - cv["cv_se_best"]
    assert all(m < cv["cv_score_best"] - cv["cv_se_best"] for m in cv["cv_mean"][:i_chosen])
    assert cv["cv_score_best"] > 0.75  # a clean 1-d signal is found


def test_a_best_C_only_at_the_grid_edge_is_flagged():
    assert on_grid_edge([0.5, 0.6, 0.7, 0.8])  # still rising at the weak-penalty end
    assert on_grid_edge([0.9, 0.6, 0.6, 0.6])  # best only at the strong-penalty end
    assert not on_grid_edge([0.6, 0.8, 0.7, 0.6])  # an interior optimum
    assert not on_grid_edge([0.8, 0.8, 0.8, 0.8])  # a plateau: any C decides alike


def test_a_resolved_pick_raises_no_edge_warning(caplog):
    # well separated classes: every C from the middle of the grid up scores the same, so the
    # best is reached in the interior and nothing is flagged
    rng = np.random.default_rng(0)
    X = np.concatenate([rng.normal(-3, 1, (30, 2)), rng.normal(3, 1, (30, 2))])
    y = np.repeat([0, 1], 30)
    folds = np.tile(np.arange(5), 12)
    with caplog.at_level("WARNING"):
        pipe = fit_probe(X, y, folds=folds, label="clean")
    assert not pipe.cv_["edge"] and "edge of the grid" not in caplog.text


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


def test_a_strongly_penalised_probe_keeps_its_decisions_and_gets_calibrated_probabilities():
    rng = np.random.default_rng(0)
    X = rng.standard_normal((400, 3))
    p_true = 1 / (1 + np.exp(-2.0 * X[:, 0]))
    y = (rng.uniform(size=400) < p_true).astype(int)
    folds = np.repeat(np.arange(5), 80)
    pipe = fit_probe(X, y, folds=folds)
    p = pipe.predict_proba(X)[:, 1]
    # calibrated: predicted P tracks the true P, not squeezed towards 0.5
    assert np.corrcoef(p, p_true)[0, 1] > 0.95
    assert p.std() > 0.5 * p_true.std()
    assert pipe.cv_["logit_scale"] > 0
    raw = 1 / (1 + np.exp(-(X[:, 0] * 1e-6)))  # a logit squeezed a millionfold ...
    a = logit_scale(np.log(raw / (1 - raw)), y)
    assert 1e5 < a < 1e7  # ... is scaled back (true logit 2 x[0])
