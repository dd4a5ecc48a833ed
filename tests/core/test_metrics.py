"""Balanced accuracy, its bootstrap CI and paired comparisons (phosphene.metrics)."""

from __future__ import annotations

import numpy as np
import pytest
from sklearn.metrics import balanced_accuracy_score

from phosphene.metrics import balanced_accuracy, bootstrap_ci, mcnemar_p, paired_comparison


def _decisions(n, accuracy, seed):
    rng = np.random.default_rng(seed)
    y = (rng.uniform(size=n) < 0.35).astype(int)
    correct = rng.uniform(size=n) < accuracy
    return y, np.where(correct, y, 1 - y)


@pytest.mark.parametrize("seed", range(5))
def test_balanced_accuracy_equals_scikit_learn(seed):
    y, pred = _decisions(300, 0.7, seed)
    assert balanced_accuracy(y, pred) == pytest.approx(balanced_accuracy_score(y, pred))
    assert balanced_accuracy([1, 1, 1], [1, 0, 1]) == pytest.approx(2 / 3)  # one class present


def test_ci_shrinks_with_trials_and_covers_the_truth():
    half_widths, covered = {}, 0
    for n in (80, 2000):
        y, pred = _decisions(n, 0.75, seed=n)
        lo, hi = bootstrap_ci(y, pred)
        assert lo <= balanced_accuracy(y, pred) <= hi
        half_widths[n] = (hi - lo) / 2
    # +-10 points at 80 trials, +-2 at 2,000 (the reason for the evaluation set)
    assert 0.07 < half_widths[80] < 0.13 and 0.01 < half_widths[2000] < 0.025
    for seed in range(40):
        y, pred = _decisions(400, 0.75, seed=100 + seed)
        lo, hi = bootstrap_ci(y, pred, n_boot=500, seed=seed)
        covered += lo <= 0.75 <= hi
    assert covered >= 34  # ~95% of 40 intervals cover the true value


def test_paired_comparison_sees_a_small_difference_that_unpaired_cis_cannot():
    rng = np.random.default_rng(0)
    n = 2000
    y = (rng.uniform(size=n) < 0.5).astype(int)
    a = np.where(rng.uniform(size=n) < 0.80, y, 1 - y)
    b = a.copy()
    flip = rng.choice(np.flatnonzero(a == y), size=60, replace=False)  # b errs on 60 more
    b[flip] = 1 - b[flip]
    c = paired_comparison(y, a, b)
    assert c["diff"] == pytest.approx(balanced_accuracy(y, a) - balanced_accuracy(y, b))
    assert 0 < c["ci95"][0] < c["diff"] < c["ci95"][1]
    assert c["p_value"] < 0.01 and c["mcnemar_p"] < 1e-10 and c["n"] == n
    # the unpaired CIs overlap: without pairing this 3-point difference is not resolved
    lo_a, _ = bootstrap_ci(y, a)
    _, hi_b = bootstrap_ci(y, b)
    assert lo_a < hi_b


def test_identical_decoders_do_not_differ():
    y, pred = _decisions(500, 0.7, seed=3)
    c = paired_comparison(y, pred, pred)
    assert c["diff"] == 0 and c["ci95"] == [0.0, 0.0] and c["p_value"] == 1.0
    assert c["mcnemar_p"] == 1.0


def test_mcnemar_matches_the_exact_binomial():
    from math import comb

    y = np.zeros(30, int)
    a = np.zeros(30, int)
    b = np.zeros(30, int)
    b[:7] = 1  # b wrong on 7 trials where a is right
    a[7:9] = 1  # a wrong on 2 where b is right
    expected = min(1.0, 2 * sum(comb(9, i) for i in range(3)) / 2 ** 9)
    assert mcnemar_p(y, a, b) == pytest.approx(expected)


def test_mismatched_lengths_are_a_clear_error():
    with pytest.raises(ValueError, match="same trials"):
        paired_comparison([0, 1], [0, 1], [0, 1, 1])
