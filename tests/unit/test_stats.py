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


# --- across seeds -----------------------------------------------------------------------------

SEEDS_A = [52.1, 48.7, 55.0, 50.3]
SEEDS_B = [49.0, 47.9, 51.2, 50.1]


def test_t_interval_equals_scipy():
    from promptcl.stats import t_interval

    row = t_interval(SEEDS_A)
    low, high = sp.t.interval(0.95, 3, loc=np.mean(SEEDS_A), scale=sp.sem(SEEDS_A))
    assert row["n"] == 4 and row["mean"] == pytest.approx(np.mean(SEEDS_A))
    assert row["sd"] == pytest.approx(np.std(SEEDS_A, ddof=1))
    assert (row["ci_low"], row["ci_high"]) == pytest.approx((low, high))
    one = t_interval([3.0, float("nan")])
    assert one["n"] == 1 and one["mean"] == 3.0 and np.isnan(one["ci_low"])


def test_paired_t_test_equals_scipy_ttest_rel():
    from promptcl.stats import paired_t_test

    found = paired_t_test(SEEDS_A, SEEDS_B)
    expected = sp.ttest_rel(SEEDS_A, SEEDS_B)
    assert found["t"] == pytest.approx(expected.statistic)
    assert found["p"] == pytest.approx(expected.pvalue)
    ci = expected.confidence_interval(0.95)
    assert (found["ci_low"], found["ci_high"]) == pytest.approx((ci.low, ci.high))
    assert found["diff"] == pytest.approx(np.mean(np.subtract(SEEDS_A, SEEDS_B)))
    assert np.isnan(paired_t_test([1.0], [2.0])["p"])  # one seed: no test
    # the same difference in every seed: scipy says p = 0; here the test is undefined
    same = paired_t_test([51.0, 47.0], [48.0, 44.0])
    assert same["diff"] == 3.0 and np.isnan(same["p"]) and np.isnan(same["ci_low"])
    # scores are means of 0/100 items: equal differences can differ in the last bit
    rounded = paired_t_test([100 / 24 * 11, 100 / 24 * 7], [100 / 24 * 10 - 1e-13, 100 / 24 * 6])
    assert np.isnan(rounded["p"])


def test_holm_on_a_hand_example():
    from promptcl.stats import holm

    # sorted p: 0.01 (×4 = 0.04), 0.02 (×3 = 0.06), 0.03 (×2 = 0.06, kept monotone), 0.5 (×1)
    adjusted = holm([0.03, 0.5, 0.01, float("nan"), 0.02])
    expected = [0.06, 0.5, 0.04, float("nan"), 0.06]
    np.testing.assert_allclose(adjusted, expected)


def test_bootstrap_p_is_the_normal_approximation_with_the_bootstrap_se():
    from promptcl.stats import bootstrap_p

    draws = np.random.default_rng(0).normal(1.0, 0.5, size=4000)
    se = draws.std(ddof=1)
    assert bootstrap_p(draws, 1.0) == pytest.approx(2 * sp.norm.sf(1.0 / se))
    assert bootstrap_p(draws, 0.0) == pytest.approx(1.0)
    # far below 2 / (B + 1): Holm over many comparisons stays possible
    assert bootstrap_p(draws, 4.0) < 1e-10
    assert np.isnan(bootstrap_p(np.array([2.0] * 50), 2.0))  # no variation: no test
    assert bootstrap_p(np.zeros(50), 0.0) == 1.0  # identical runs
