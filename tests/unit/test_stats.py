"""Correlations, spreads and bootstrap intervals of the study against scipy and numpy."""

import numpy as np
import pytest
from scipy import stats as sp

from promptcl.stats import (
    bootstrap_ci,
    correlation_ci,
    correlation_row,
    mean_correlation_ci,
    pearson,
    ranks,
    spearman,
    spread,
)

X = [3.1, 1.2, 5.5, 2.2, 2.2, 9.0, 4.4, 0.3]
Y = [2.0, 1.5, 4.0, 2.5, 1.0, 7.5, 5.0, 0.0]


def test_ranks_average_ties_like_scipy():
    assert ranks(X).tolist() == sp.rankdata(X).tolist()
    assert ranks([1, 1, 1]).tolist() == [2.0, 2.0, 2.0]


def test_pearson_and_spearman_equal_scipy():
    assert pearson(X, Y) == pytest.approx(sp.pearsonr(X, Y).statistic, abs=1e-12)
    assert spearman(X, Y) == pytest.approx(sp.spearmanr(X, Y).statistic, abs=1e-12)
    assert spearman(X, [-y for y in Y]) == pytest.approx(-sp.spearmanr(X, Y).statistic)


def test_a_constant_side_has_no_correlation():
    assert np.isnan(pearson(X, [1.0] * len(X)))
    with pytest.raises(ValueError, match="8 values against 3"):
        pearson(X, [1, 2, 3])


def test_spread_is_range_and_sample_sd():
    found = spread(X)
    assert found["range"] == pytest.approx(np.ptp(X))
    assert found["sd"] == pytest.approx(np.std(X, ddof=1))


def test_bootstrap_interval_equals_the_numpy_percentile_bootstrap():
    x = np.asarray(X)
    idx = np.random.default_rng(7).integers(0, len(x), size=(500, len(x)))
    want = np.percentile(x[idx].mean(axis=1), [2.5, 97.5])
    got = bootstrap_ci(x, np.mean, resamples=500, seed=7)
    assert got == pytest.approx(tuple(want))


def test_bootstrap_interval_agrees_with_scipy_on_known_data():
    rng = np.random.default_rng(0)
    x = rng.normal(10, 2, size=200)
    ours = bootstrap_ci(x, np.mean, resamples=4000, seed=1)
    theirs = sp.bootstrap((x,), np.mean, n_resamples=4000, method="percentile", rng=2)
    ci = theirs.confidence_interval
    # two independent bootstraps of the same statistic agree to Monte-Carlo error
    assert ours[0] == pytest.approx(ci.low, abs=0.06)
    assert ours[1] == pytest.approx(ci.high, abs=0.06)
    assert ours[0] < x.mean() < ours[1]


def test_correlation_interval_resamples_pairs_together():
    exact = list(range(10))
    assert correlation_ci(exact, [2 * v + 1 for v in exact], "pearson", 200) == (
        pytest.approx(1.0),
        pytest.approx(1.0),
    )
    row = correlation_row(X, Y, "spearman", seed=3, resamples=500)
    assert row["ci_low"] <= row["r"] <= row["ci_high"] and row["n"] == len(X)


def test_mean_correlation_is_the_mean_over_groups_with_a_stratified_interval():
    groups = [(X, Y), (Y, X[::-1])]
    found = mean_correlation_ci(groups, "pearson", resamples=300, seed=0)
    assert found["r"] == pytest.approx(np.mean([pearson(X, Y), pearson(Y, X[::-1])]))
    assert found["ci_low"] <= found["r"] <= found["ci_high"]
    assert found["n"] == 2 * len(X)
