"""Correlations, spreads and bootstrap intervals of the study against scipy and numpy."""

import numpy as np
import pytest
from scipy import stats as sp

from promptcl.analysis.stats import (
    BranchSample,
    bootstrap_ci,
    bootstrap_indices,
    correlation_ci,
    correlation_row,
    mean_correlation_ci,
    pearson,
    ranks,
    sd_interval,
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


def test_sd_interval_is_the_chi_square_formula():
    n, sd = len(X), np.std(X, ddof=1)
    low = sd * np.sqrt((n - 1) / sp.chi2.ppf(0.975, n - 1))
    high = sd * np.sqrt((n - 1) / sp.chi2.ppf(0.025, n - 1))
    assert sd_interval(X) == (pytest.approx(low, rel=1e-12), pytest.approx(high, rel=1e-12))
    assert sd_interval([*X, np.nan]) == sd_interval(X)  # NaN values dropped
    assert all(np.isnan(sd_interval([1.0])))


@pytest.mark.parametrize("n", [7, 13])
def test_sd_interval_covers_a_normal_sd_95_percent_of_the_time(n):
    samples = np.random.default_rng(n).normal(0.0, 2.0, size=(4000, n))
    covered = [low <= 2.0 <= high for low, high in map(sd_interval, samples)]
    assert np.mean(covered) == pytest.approx(0.95, abs=0.015)


def test_mean_correlation_is_the_mean_over_branches_and_tasks():
    branches = [
        BranchSample(range(len(X)), X, [Y, X[::-1]]),
        BranchSample([4, 9, 2, 7, 5], Y[:5], [X[:5]]),
    ]
    found = mean_correlation_ci(branches, "pearson", resamples=300, seed=0)
    want = [pearson(X, Y), pearson(X, X[::-1]), pearson(Y[:5], X[:5])]
    assert found["r"] == pytest.approx(np.mean(want))
    assert found["ci_low"] <= found["r"] <= found["ci_high"]
    assert (found["n"], found["branches"]) == (len(X) + 5, 2)  # candidates, not × tasks
    with pytest.raises(ValueError, match="unique candidate ids"):
        mean_correlation_ci([BranchSample([0, 0, 1], X[:3], [Y[:3]])], "pearson", resamples=10)
    with pytest.raises(ValueError, match="one predictor and outcome value per id"):
        mean_correlation_ci([BranchSample([0, 1, 2], X[:3], [Y[:4]])], "pearson", resamples=10)


def test_mean_correlation_draws_a_branchs_candidates_once_for_all_its_tasks():
    rng = np.random.default_rng(5)
    x = rng.normal(size=12)
    y = 0.5 * x + rng.normal(size=12)
    copies = mean_correlation_ci([BranchSample(range(12), x, [y] * 4)], "pearson", 1000, seed=2)
    # identical tasks under one draw: the mean is each resample's single correlation
    single = correlation_ci(x, y, "pearson", resamples=1000, seed=2)
    assert (copies["ci_low"], copies["ci_high"]) == pytest.approx(single)
    assert copies["n"] == 12 and copies["branches"] == 1
    # drawing each task anew averages 4 independent resamples: a clearly narrower interval
    draws = np.random.default_rng(2).integers(0, 12, size=(4, 1000, 12))
    independent = np.percentile(
        [np.mean([pearson(x[d[b]], y[d[b]]) for d in draws]) for b in range(1000)], [2.5, 97.5]
    )
    assert copies["ci_high"] - copies["ci_low"] > 1.6 * (independent[1] - independent[0])


def test_mean_correlation_drops_a_nan_outcome_for_its_task_only():
    x = np.asarray(X)
    gap = np.asarray(Y, dtype=float)
    gap[2] = np.nan
    found = mean_correlation_ci([BranchSample(range(8), x, [Y, gap])], "spearman", 400, seed=1)
    keep = np.isfinite(gap)
    assert found["r"] == pytest.approx(np.mean([spearman(x, Y), spearman(x[keep], gap[keep])]))
    assert found["n"] == 8
    # the reference: one draw over the branch's 8 candidates per resample, shared by both tasks
    samples = []
    for i in bootstrap_indices(8, 400, seed=1):
        kept = i[np.isfinite(gap[i])]
        samples.append(np.nanmean([spearman(x[i], np.asarray(Y)[i]), spearman(x[kept], gap[kept])]))
    assert (found["ci_low"], found["ci_high"]) == pytest.approx(
        tuple(np.percentile(np.asarray(samples)[np.isfinite(samples)], [2.5, 97.5]))
    )


# --- across seeds -----------------------------------------------------------------------------

SEEDS_A = [52.1, 48.7, 55.0, 50.3]
SEEDS_B = [49.0, 47.9, 51.2, 50.1]


def test_t_interval_equals_scipy():
    from promptcl.analysis.stats import t_interval

    row = t_interval(SEEDS_A)
    low, high = sp.t.interval(0.95, 3, loc=np.mean(SEEDS_A), scale=sp.sem(SEEDS_A))
    assert row["n"] == 4 and row["mean"] == pytest.approx(np.mean(SEEDS_A))
    assert row["sd"] == pytest.approx(np.std(SEEDS_A, ddof=1))
    assert (row["ci_low"], row["ci_high"]) == pytest.approx((low, high))
    one = t_interval([3.0, float("nan")])
    assert one["n"] == 1 and one["mean"] == 3.0 and np.isnan(one["ci_low"])


def test_paired_t_test_equals_scipy_ttest_rel():
    from promptcl.analysis.stats import paired_t_test

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
    from promptcl.analysis.stats import holm

    # sorted p: 0.01 (×4 = 0.04), 0.02 (×3 = 0.06), 0.03 (×2 = 0.06, kept monotone), 0.5 (×1)
    adjusted = holm([0.03, 0.5, 0.01, float("nan"), 0.02])
    expected = [0.06, 0.5, 0.04, float("nan"), 0.06]
    np.testing.assert_allclose(adjusted, expected)


def test_bootstrap_p_is_the_normal_approximation_with_the_bootstrap_se():
    from promptcl.analysis.stats import bootstrap_p

    draws = np.random.default_rng(0).normal(1.0, 0.5, size=4000)
    se = draws.std(ddof=1)
    assert bootstrap_p(draws, 1.0) == pytest.approx(2 * sp.norm.sf(1.0 / se))
    assert bootstrap_p(draws, 0.0) == pytest.approx(1.0)
    # far below 2 / (B + 1): Holm over many comparisons stays possible
    assert bootstrap_p(draws, 4.0) < 1e-10
    assert np.isnan(bootstrap_p(np.array([2.0] * 50), 2.0))  # no variation: no test
    assert bootstrap_p(np.zeros(50), 0.0) == 1.0  # identical runs


# --- power: the minimum detectable difference -------------------------------------------------


def test_mde_z_is_the_normal_quantile_sum_times_the_se():
    from statistics import NormalDist

    from promptcl.analysis.stats import POWER, mde_z

    z = NormalDist().inv_cdf
    assert POWER == 0.8
    assert mde_z(2.0, 0.05) == pytest.approx((1.959964 + 0.841621) * 2.0, rel=1e-6)
    assert mde_z(1.5, 0.01, 0.9) == pytest.approx((z(0.995) + z(0.9)) * 1.5, rel=1e-9)
    assert mde_z(1.0, 0.05 / 63) > mde_z(1.0, 0.05)  # Holm: more tests, larger mde
    for undefined in (0.0, float("nan"), float("inf")):
        assert np.isnan(mde_z(undefined, 0.05))


def test_mde_z_is_detected_with_80_percent_power_in_simulation():
    from promptcl.analysis.stats import bootstrap_p, mde_z

    se, alpha = 2.5, 0.05 / 14
    estimates = np.random.default_rng(0).normal(mde_z(se, alpha), se, size=2000)
    # bootstrap_p's test: 2·Φ(−|d|/se), here with draws of SD se around each estimate
    draws = np.random.default_rng(1).standard_normal(4000)
    draws = (draws - draws.mean()) / draws.std(ddof=1) * se
    rejected = np.mean([bootstrap_p(draws, d) < alpha for d in estimates])
    assert rejected == pytest.approx(0.8, abs=0.03)


def test_mde_t_solves_the_noncentral_t_and_exceeds_the_usual_approximation():
    from statistics import NormalDist

    from promptcl.analysis.stats import mde_t

    sd, n, alpha = 3.0, 4, 0.05 / 7
    mde = mde_t(sd, n, alpha)
    critical = sp.t.ppf(1 - alpha / 2, n - 1)
    assert sp.nct.sf(critical, n - 1, mde * np.sqrt(n) / sd) == pytest.approx(0.8, abs=1e-9)
    approx = (critical + sp.t.ppf(0.8, n - 1)) * sd / np.sqrt(n)
    assert mde > approx  # the approximation overstates the power with few pairs
    # with many pairs the t-test is the z-test
    z = NormalDist().inv_cdf
    assert mde_t(1.0, 5000, 0.05) == pytest.approx((z(0.975) + z(0.8)) / np.sqrt(5000), rel=1e-3)
    assert mde_t(1.0, 3, 0.05 / 63) > mde_t(1.0, 3, 0.05 / 7) > mde_t(1.0, 3, 0.05)
    for sd_, n_ in ((1.0, 1), (1.0, 0), (0.0, 3), (float("nan"), 3)):
        assert np.isnan(mde_t(sd_, n_, 0.05))


@pytest.mark.parametrize("n", [2, 3, 8])
def test_mde_t_is_detected_with_80_percent_power_in_simulation(n):
    from promptcl.analysis.stats import mde_t

    sd, alpha, runs = 4.0, 0.05 / 7, 2000
    mde = mde_t(sd, n, alpha)
    rng = np.random.default_rng(n)
    base = rng.normal(50.0, 10.0, size=(runs, n))  # paired scores of the baseline per seed
    other = base + rng.normal(mde, sd, size=(runs, n))  # the true difference is the mde
    d = other - base
    t = d.mean(axis=1) / (d.std(axis=1, ddof=1) / np.sqrt(n))
    rejected = np.mean(np.abs(t) > sp.t.ppf(1 - alpha / 2, n - 1))
    assert rejected == pytest.approx(0.8, abs=0.03)


def test_bootstrap_se_is_the_sd_of_the_finite_resamples():
    from promptcl.analysis.stats import bootstrap_se

    draws = np.array([1.0, 2.0, np.nan, 4.0])
    assert bootstrap_se(draws) == pytest.approx(np.std([1.0, 2.0, 4.0], ddof=1))
    assert np.isnan(bootstrap_se(np.array([1.0])))
