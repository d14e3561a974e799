"""Numbers with intervals: spreads (chi-square interval of the SD), correlations and percentile
bootstrap intervals over the study's candidates; t intervals over seeds, paired t-tests, Holm's
correction and the minimum detectable difference (power) for comparisons of runs.

Correlations and bootstraps are numpy only (scipy only for the t, chi-square and normal
quantiles); the tests check every statistic against scipy. A bootstrap resamples the unit that
varies (candidates, or test instances) with a fixed seed, so an interval is reproducible and two
analyses of one table agree.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Sequence
from typing import NamedTuple

import numpy as np

LEVEL = 0.95
RESAMPLES = 2000
#: the power at which a comparison's minimum detectable difference (``mde``) is stated
POWER = 0.8


def ranks(values: Sequence[float]) -> np.ndarray:
    """Ranks 1..n with ties given their average rank (as scipy.stats.rankdata)."""
    x = np.asarray(values, dtype=float)
    order = np.argsort(x, kind="mergesort")
    ranked = np.empty(len(x))
    sorted_x = x[order]
    start = 0
    while start < len(x):
        stop = start
        while stop + 1 < len(x) and sorted_x[stop + 1] == sorted_x[start]:
            stop += 1
        ranked[order[start : stop + 1]] = (start + stop) / 2 + 1
        start = stop + 1
    return ranked


def pearson(x: Sequence[float], y: Sequence[float]) -> float:
    """Pearson's r; NaN when either side is constant (no linear association is defined)."""
    a, b = np.asarray(x, dtype=float), np.asarray(y, dtype=float)
    if len(a) != len(b):
        raise ValueError(f"pearson: {len(a)} values against {len(b)}")
    a, b = a - a.mean(), b - b.mean()
    denominator = np.sqrt((a * a).sum() * (b * b).sum())
    return float((a * b).sum() / denominator) if denominator > 0 else float("nan")


def spearman(x: Sequence[float], y: Sequence[float]) -> float:
    """Spearman's rho: Pearson's r of the (tie-averaged) ranks."""
    return pearson(ranks(x), ranks(y))


CORRELATIONS: dict[str, Callable[[Sequence[float], Sequence[float]], float]] = {
    "pearson": pearson,
    "spearman": spearman,
}


def spread(values: Sequence[float]) -> dict[str, float]:
    """Range (max − min) and sample standard deviation (ddof=1) of a set of outcomes."""
    x = np.asarray(values, dtype=float)
    return {
        "range": float(x.max() - x.min()),
        "sd": float(x.std(ddof=1)) if len(x) > 1 else float("nan"),
    }


def sd_interval(values: Sequence[float], level: float = LEVEL) -> tuple[float, float]:
    """Chi-square interval of a normal population's SD from a sample: exact under normality,
    where a percentile bootstrap of the SD is too short with few candidates (NaN values are
    dropped; NaN interval for n < 2)."""
    from scipy import stats as st

    x = np.asarray(values, dtype=float)
    x = x[np.isfinite(x)]
    n = len(x)
    if n < 2:
        return float("nan"), float("nan")
    sd = float(x.std(ddof=1))
    tail = (1 - level) / 2
    low = sd * np.sqrt((n - 1) / st.chi2.ppf(1 - tail, n - 1))
    high = sd * np.sqrt((n - 1) / st.chi2.ppf(tail, n - 1))
    return float(low), float(high)


def _interval(samples: np.ndarray, level: float) -> tuple[float, float]:
    samples = samples[np.isfinite(samples)]
    if len(samples) == 0:
        return float("nan"), float("nan")
    tail = (1 - level) / 2 * 100
    low, high = np.percentile(samples, [tail, 100 - tail])
    return float(low), float(high)


def bootstrap_indices(n: int, resamples: int = RESAMPLES, seed: int = 0) -> np.ndarray:
    """resamples × n indices drawn with replacement (one row per bootstrap sample)."""
    return np.random.default_rng(seed).integers(0, n, size=(resamples, n))


def bootstrap_ci(
    values: Sequence[float],
    statistic: Callable[[np.ndarray], float],
    resamples: int = RESAMPLES,
    level: float = LEVEL,
    seed: int = 0,
) -> tuple[float, float]:
    """Percentile interval of ``statistic`` over candidates resampled with replacement."""
    x = np.asarray(values, dtype=float)
    draws = bootstrap_indices(len(x), resamples, seed)
    return _interval(np.array([statistic(x[i]) for i in draws]), level)


def correlation_ci(
    x: Sequence[float],
    y: Sequence[float],
    kind: str,
    resamples: int = RESAMPLES,
    level: float = LEVEL,
    seed: int = 0,
) -> tuple[float, float]:
    """Percentile interval of a correlation, resampling (x, y) pairs together."""
    a, b = np.asarray(x, dtype=float), np.asarray(y, dtype=float)
    correlate = CORRELATIONS[kind]
    draws = bootstrap_indices(len(a), resamples, seed)
    return _interval(np.array([correlate(a[i], b[i]) for i in draws]), level)


def correlation_row(
    x: Sequence[float], y: Sequence[float], kind: str, seed: int = 0, resamples: int = RESAMPLES
) -> dict[str, float]:
    """One correlation with its interval and n, as a table row."""
    low, high = correlation_ci(x, y, kind, resamples=resamples, seed=seed)
    return {"r": CORRELATIONS[kind](x, y), "ci_low": low, "ci_high": high, "n": len(x)}


class BranchSample(NamedTuple):
    """One branch of :func:`mean_correlation_ci`: ``x`` (the predictor) and each of
    ``outcomes`` (one sequence per task) hold one value per candidate id of ``candidates``, in
    that order; NaN = not measured."""

    candidates: Sequence[int]
    x: Sequence[float]
    outcomes: Sequence[Sequence[float]]


def _nanmean(values: Sequence[float]) -> float:
    x = np.asarray(values, dtype=float)
    x = x[np.isfinite(x)]
    return float(x.mean()) if len(x) else float("nan")


def _finite_correlation(
    correlate: Callable[[Sequence[float], Sequence[float]], float], x: np.ndarray, y: np.ndarray
) -> float:
    keep = np.isfinite(x) & np.isfinite(y)
    return correlate(x[keep], y[keep]) if keep.sum() >= 2 else float("nan")


def mean_correlation_ci(
    branches: Sequence[BranchSample],
    kind: str,
    resamples: int = RESAMPLES,
    level: float = LEVEL,
    seed: int = 0,
) -> dict[str, float]:
    """The mean of a correlation over (branch, task) groups and its percentile bootstrap interval.

    A branch's tasks are measured on the same candidates, so each resample draws a branch's
    candidates once and applies that draw to every task: drawing per task would average the
    tasks' shared sampling noise away and make the interval too narrow. A candidate with a NaN
    value leaves only that task's correlation. ``n`` counts the candidates resampled."""
    correlate = CORRELATIONS[kind]
    rng = np.random.default_rng(seed)
    prepared = []
    for branch in branches:
        ids = np.asarray(branch.candidates)
        x = np.asarray(branch.x, dtype=float)
        ys = [np.asarray(y, dtype=float) for y in branch.outcomes]
        if len(np.unique(ids)) != len(ids) or any(len(v) != len(ids) for v in (x, *ys)):
            raise ValueError(
                "mean_correlation_ci: a branch needs unique candidate ids and one predictor and "
                "outcome value per id"
            )
        prepared.append((x, ys, rng.integers(0, len(ids), size=(resamples, len(ids)))))
    point = _nanmean([_finite_correlation(correlate, x, y) for x, ys, _ in prepared for y in ys])
    samples = np.array(
        [
            _nanmean(
                [
                    _finite_correlation(correlate, x[draws[b]], y[draws[b]])
                    for x, ys, draws in prepared
                    for y in ys
                ]
            )
            for b in range(resamples)
        ]
    )
    low, high = _interval(samples, level)
    return {
        "r": point,
        "ci_low": low,
        "ci_high": high,
        "n": sum(len(x) for x, _, _ in prepared),
        "branches": len(prepared),
    }


# --- across seeds ---------------------------------------------------------------------------------


def t_interval(values: Sequence[float], level: float = LEVEL) -> dict[str, float]:
    """Mean, sample SD, n and the t interval of the mean (NaN interval for n < 2; NaN values
    are dropped)."""
    from scipy import stats as st

    x = np.asarray(values, dtype=float)
    x = x[np.isfinite(x)]
    n = len(x)
    mean = float(x.mean()) if n else float("nan")
    if n < 2:
        return {"mean": mean, "sd": float("nan"), "n": n, "ci_low": np.nan, "ci_high": np.nan}
    sd = float(x.std(ddof=1))
    half = float(st.t.ppf(0.5 + level / 2, n - 1)) * sd / np.sqrt(n)
    return {"mean": mean, "sd": sd, "n": n, "ci_low": mean - half, "ci_high": mean + half}


def paired_t_test(a: Sequence[float], b: Sequence[float], level: float = LEVEL) -> dict[str, float]:
    """a − b paired by position (seeds): the mean difference, its SD and t interval, t and the
    two-sided p-value (as scipy.stats.ttest_rel). t and p are NaN for fewer than 2 pairs, and
    when every difference is equal: scipy then reports p = 0, but with few seeds and discrete
    scores equal differences are a coincidence, not infinite evidence."""
    from scipy import stats as st

    x, y = np.asarray(a, dtype=float), np.asarray(b, dtype=float)
    if x.shape != y.shape:
        raise ValueError(f"paired test: {len(x)} values against {len(y)}")
    keep = np.isfinite(x) & np.isfinite(y)
    d = x[keep] - y[keep]
    row = t_interval(d, level)
    row = {"diff": row.pop("mean"), **row}
    n = row["n"]
    if n < 2:
        return {**row, "t": np.nan, "p": np.nan}
    if row["sd"] <= 1e-9 * max(1.0, abs(row["diff"])):  # equal up to float rounding
        return {**row, "ci_low": np.nan, "ci_high": np.nan, "t": np.nan, "p": np.nan}
    t = row["diff"] / (row["sd"] / np.sqrt(n))
    return {**row, "t": float(t), "p": float(2 * st.t.sf(abs(t), n - 1))}


def holm(pvalues: Sequence[float]) -> np.ndarray:
    """Holm's step-down adjusted p-values (NaNs stay NaN and do not count as tests)."""
    p = np.asarray(pvalues, dtype=float)
    out = np.full(len(p), np.nan)
    valid = np.flatnonzero(np.isfinite(p))
    m = len(valid)
    running = 0.0
    for rank, i in enumerate(valid[np.argsort(p[valid], kind="mergesort")]):
        running = max(running, min(1.0, (m - rank) * p[i]))
        out[i] = running
    return out


def bootstrap_se(differences: np.ndarray) -> float:
    """The standard error of a difference from its bootstrap distribution: the SD (ddof=1) of
    the finite resampled differences (NaN for fewer than 2); :func:`bootstrap_p` tests with it."""
    d = np.asarray(differences, dtype=float)
    d = d[np.isfinite(d)]
    return float(d.std(ddof=1)) if len(d) >= 2 else float("nan")


def bootstrap_p(differences: np.ndarray, point: float | None = None) -> float:
    """Two-sided p-value of a difference being 0 from its bootstrap distribution: the normal
    approximation 2·Φ(−|point| / SD of the resampled differences).

    Counting resamples beyond 0 instead cannot go below 2/(B + 1), which Holm's correction over
    m tests would need B > 2m/α resamples to pass; the normal form has no such floor. When the
    resampled differences do not vary: 1 for a zero difference, else NaN (no test)."""
    from scipy import stats as st

    d = np.asarray(differences, dtype=float)
    d = d[np.isfinite(d)]
    if len(d) < 2:
        return float("nan")
    point = float(d.mean()) if point is None else float(point)
    se = bootstrap_se(d)
    if se <= 1e-12 * max(1.0, abs(point)):
        return 1.0 if abs(point) <= 1e-12 else float("nan")  # identical runs differ by nothing
    return float(2 * st.norm.sf(abs(point) / se))


def interval(samples: np.ndarray, level: float = LEVEL) -> tuple[float, float]:
    """Percentile interval of bootstrap samples (non-finite samples dropped)."""
    return _interval(np.asarray(samples, dtype=float), level)


# --- power: what a comparison could have detected ---------------------------------------------


@functools.lru_cache(maxsize=512)
def _t_noncentrality(n: int, alpha: float, power: float) -> float:
    """The noncentrality δ·√n/sd at which a two-sided paired t-test on ``n`` pairs rejects at
    level ``alpha`` with probability ``power`` (rejections in the wrong direction, about 1e-6 at
    most at 80% power, are not counted)."""
    from scipy import optimize
    from scipy import stats as st

    df = n - 1
    critical = float(st.t.ppf(1 - alpha / 2, df))

    def shortfall(ncp: float) -> float:
        return float(st.nct.sf(critical, df, ncp)) - power

    high = critical + float(st.norm.ppf(power)) + 1.0
    while shortfall(high) < 0:
        high *= 2
    if not np.isfinite(shortfall(high)):
        raise ValueError(f"power of the t-test undefined (n={n}, alpha={alpha}, power={power})")
    return float(optimize.brentq(shortfall, 0.0, high, xtol=1e-12))


def mde_t(sd: float, n: int, alpha: float, power: float = POWER) -> float:
    """Minimum detectable difference of a two-sided paired t-test on ``n`` pairs whose
    differences have SD ``sd``, at level ``alpha`` and the given power: the exact solution with
    the noncentral t, δ = ncp·sd/√n. The usual approximation (t_{1−α/2} + t_{power})·sd/√n
    is too small for few pairs: with 2 seeds and α = 0.05 it has 73% power, at α = 0.05/63
    68%, where this one has the stated power.

    NaN for n < 2 or an SD that is not positive and finite: without variation across pairs
    the t-test itself is undefined, so there is no power to state."""
    if n is None or not np.isfinite(n) or n < 2 or sd is None or not np.isfinite(sd) or sd <= 0:
        return float("nan")
    n = int(n)
    return _t_noncentrality(n, float(alpha), float(power)) * float(sd) / float(np.sqrt(n))


def mde_z(se: float, alpha: float, power: float = POWER) -> float:
    """Minimum detectable difference of a two-sided z-test (the bootstrap's normal
    approximation) with standard error ``se``: (z_{1−α/2} + z_{power})·se. NaN when ``se`` is
    not positive and finite (resamples that do not vary test nothing)."""
    from scipy import stats as st

    if se is None or not np.isfinite(se) or se <= 0:
        return float("nan")
    return float((st.norm.ppf(1 - alpha / 2) + st.norm.ppf(power)) * se)
