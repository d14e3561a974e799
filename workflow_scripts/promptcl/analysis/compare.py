"""Results that hold across seeds: runs that differ only by seed aggregated (mean, SD, t interval,
n), and every (method, strategy) compared with a configured baseline, paired.

Two paired comparisons, both Holm-corrected within each family (one protocol and score metric,
all configurations and measures):

* across seeds: a paired t-test on the per-seed differences of a measure (needs 2+ seeds);
* within a seed: a paired bootstrap over test instances. Both runs scored the same items, so
  each resample draws the same instances of every task for both runs and for every row of R,
  and recomputes each measure from the resampled R (percentile interval; p from the normal
  approximation with the bootstrap SE, which has no 2/(B+1) floor for Holm to trip on).

A difference is called "higher" or "lower" only when its Holm-adjusted p-value is below
1 − level (then its interval excludes 0); otherwise it is "within noise". With two or more seeds
the verdict rests on the t-test; with one seed, or when every seed gave the same difference (the
t-test is then undefined), on the bootstraps: every seed's must agree.

Every comparison also states what it could have detected: ``mde``, the smallest true difference
its own test finds with 80% power (:data:`stats.POWER`) at α/m, α = 1 − level and m the number
of tests in its Holm family, from the observed paired variability (see :func:`_mde`).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np
import pandas as pd

from promptcl.analysis import stats
from promptcl.analysis.metrics import compared_metrics, continual_metrics

#: the configuration of a run; runs that share it differ only by seed
CONFIGURATION = ("sequence", "method", "strategy")
#: the measures aggregated and compared (columns of the run summaries)
MEASURES = ("AP", "BWT", "FWT", "F", "plasticity", "ACC", "unseen_mean")
INSTANCE_KEYS = ("protocol", "stage", "task", "id")  # then one column per metric


def instance_scores(
    tables: dict[str, dict[tuple[int, str], pd.DataFrame]], metrics: Sequence[str]
) -> pd.DataFrame:
    """The instance-level scores R is averaged from: protocol -> {(stage, task): predictions},
    one column per metric of the run."""
    parts = []
    for protocol, cells in tables.items():
        for (stage, task), df in cells.items():
            part = df[["id", *metrics]].copy()
            part.insert(0, "task", task)
            part.insert(0, "stage", int(stage))
            part.insert(0, "protocol", protocol)
            parts.append(part)
    columns = [*INSTANCE_KEYS, *metrics]
    out = pd.concat(parts, ignore_index=True) if parts else pd.DataFrame(columns=columns)
    out["id"] = out["id"].astype(str)
    return out.sort_values(["protocol", "stage", "task"], kind="stable").reset_index(drop=True)


# --- across seeds ---------------------------------------------------------------------------------


def seed_table(summary: pd.DataFrame, level: float = stats.LEVEL) -> pd.DataFrame:
    """Mean, SD, n and t interval of every measure over the seeds of each configuration."""
    rows = []
    keys = [*CONFIGURATION, "protocol", "metric"]
    for key, part in summary.groupby(keys, sort=False):
        for measure in MEASURES:
            row = stats.t_interval(part[measure].to_numpy(dtype=float), level)
            rows.append({**dict(zip(keys, key, strict=True)), "measure": measure, **row})
    columns = [*keys, "measure", "mean", "sd", "n", "ci_low", "ci_high"]
    return pd.DataFrame(rows, columns=columns)


def verdict(diff: float, p_adjusted: float, level: float = stats.LEVEL) -> str:
    if not np.isfinite(p_adjusted) or not np.isfinite(diff):
        return "n/a"
    if p_adjusted < 1 - level:
        return "higher" if diff > 0 else "lower"
    return "within noise"


def _family_holm(table: pd.DataFrame, family: Sequence[str], p: str) -> pd.Series:
    adjusted = pd.Series(np.nan, index=table.index)
    for _, part in table.groupby(list(family), sort=False):
        adjusted[part.index] = stats.holm(part[p].to_numpy(dtype=float))
    return adjusted


def _family_alpha(table: pd.DataFrame, family: Sequence[str], p: str, level: float) -> pd.Series:
    """α/m per row: Holm's most stringent threshold, m the tests (finite p) in the row's family."""
    alpha = pd.Series(np.nan, index=table.index)
    for _, part in table.groupby(list(family), sort=False):
        m = int(np.isfinite(part[p].to_numpy(dtype=float)).sum())
        alpha[part.index] = (1 - level) / m if m else np.nan
    return alpha


def _mde(
    table: pd.DataFrame,
    family: Sequence[str],
    level: float,
    mde: Callable[[pd.Series, float], float],
) -> pd.Series:
    """Each row's minimum detectable difference at 80% power for its own test, at α/m.

    Holm compares the smallest p with α/m and larger ones with looser thresholds, so a row's
    threshold depends on the other tests' outcomes; α/m is the threshold every test meets, so
    a true difference of at least ``mde`` is called with 80% power whatever the other tests
    do (conservative for the rest). NaN where the row has no test (no p)."""
    if not len(table):
        return pd.Series([], dtype=float)
    alpha = _family_alpha(table, family, "p", level)
    values = [
        mde(row, a) if np.isfinite(row["p"]) and np.isfinite(a) else np.nan
        for (_, row), a in zip(table.iterrows(), alpha, strict=True)
    ]
    return pd.Series(values, index=table.index, dtype=float)


def compare_seeds(
    summary: pd.DataFrame,
    baseline: dict,
    level: float = stats.LEVEL,
    by_seed: pd.DataFrame | None = None,
) -> pd.DataFrame:
    """Each configuration against the baseline (method, strategy) of its sequence, paired
    across the seeds both ran: mean difference with its t interval, t, p, Holm's p, the
    verdict and ``mde``: the smallest true difference the paired t-test detects with 80% power
    at α/m (α = 1 − level, m the tests of the protocol × metric family), from the SD of the
    per-seed differences (:func:`stats.mde_t`, the exact noncentral-t solution).

    ``by_seed`` (from :func:`compare_instances`) supplies the verdict where the t-test has no
    p-value: one shared seed, or the same difference in every seed; the row's ``mde`` is then
    the largest of those seeds' bootstrap ``mde``."""
    rows = _paired_seed_rows(summary, baseline, level)
    columns = [
        "sequence", "method", "strategy", "baseline", "protocol", "metric", "measure", "seeds",
        "diff", "sd", "n", "ci_low", "ci_high", "t", "p",
    ]  # fmt: skip
    table = pd.DataFrame(rows, columns=columns)
    table["p_holm"] = _family_holm(table, ["protocol", "metric"], "p") if len(table) else []
    table["basis"] = np.where(table["p"].notna(), "paired t over seeds", "")
    table["verdict"] = [
        verdict(d, p, level) for d, p in zip(table["diff"], table["p_holm"], strict=True)
    ]
    table["mde"] = _mde(
        table, ["protocol", "metric"], level, lambda row, a: stats.mde_t(row["sd"], row["n"], a)
    )
    if by_seed is not None and len(table):
        _bootstrap_verdicts(table, by_seed)
    return table


def _paired_seed_rows(summary: pd.DataFrame, baseline: dict, level: float) -> list[dict]:
    """One paired t-test row per configuration × protocol × metric × measure, over the seeds
    the configuration and its sequence's baseline both ran."""
    rows = []
    is_base = (summary["method"] == baseline["method"]) & (
        summary["strategy"] == baseline["strategy"]
    )
    base = summary[is_base]
    for key, part in summary[~is_base].groupby([*CONFIGURATION, "protocol", "metric"], sort=False):
        sequence, method, strategy, protocol, metric = key
        ref = base[
            (base["sequence"] == sequence)
            & (base["protocol"] == protocol)
            & (base["metric"] == metric)
        ]
        seeds = sorted(set(part["seed"]) & set(ref["seed"]))
        if not seeds:
            continue
        a = part.set_index("seed").loc[seeds]
        b = ref.set_index("seed").loc[seeds]
        for measure in MEASURES:
            test = stats.paired_t_test(
                a[measure].to_numpy(float), b[measure].to_numpy(float), level
            )
            rows.append(
                {
                    "sequence": sequence,
                    "method": method,
                    "strategy": strategy,
                    "baseline": f"{baseline['method']}/{baseline['strategy']}",
                    "protocol": protocol,
                    "metric": metric,
                    "measure": measure,
                    "seeds": ",".join(str(s) for s in seeds),
                    **test,
                }
            )
    return rows


def _bootstrap_verdicts(table: pd.DataFrame, by_seed: pd.DataFrame) -> None:
    """Where the t-test gives no p (one seed, or the same difference in every seed), the
    per-seed bootstraps decide: higher/lower only if every seed's says so, else within noise;
    the interval is the envelope of the seeds' intervals, p the largest Holm p, mde the largest
    of the seeds' (each seed must detect the difference for the row to call it)."""
    keys = [*CONFIGURATION, "protocol", "metric", "measure"]
    boot = by_seed.set_index(keys).sort_index()
    for i in table.index[table["p"].isna() & (table["n"] >= 1)]:
        key = tuple(table.loc[i, keys])
        seeds = [int(s) for s in str(table.loc[i, "seeds"]).split(",")]
        if key not in boot.index:
            continue
        hits = boot.loc[[key]]
        hits = hits[hits["seed"].isin(seeds)]
        if hits.empty:
            continue
        verdicts = set(hits["verdict"])
        table.loc[i, "ci_low"] = hits["ci_low"].min()
        table.loc[i, "ci_high"] = hits["ci_high"].max()
        table.loc[i, "p_holm"] = hits["p_holm"].max()
        table.loc[i, "mde"] = hits["mde"].max() if "mde" in hits else np.nan
        single = len(verdicts) == 1 and verdicts <= {"higher", "lower"}
        table.loc[i, "verdict"] = verdicts.pop() if single else "within noise"
        where = f"seed {hits['seed'].iloc[0]}" if len(hits) == 1 else f"each of {len(hits)} seeds"
        table.loc[i, "basis"] = f"paired bootstrap over instances ({where})"


# --- within a seed: the paired bootstrap over test instances --------------------------------------


def _score_rows(
    scores: pd.DataFrame, task: str, ids: Sequence[str], rows: int, metric: str
) -> np.ndarray:
    """(rows, n) scores of ``task``'s instances ``ids`` at stages 0..rows-1 (NaN rows where the
    run has no evaluation)."""
    out = np.full((rows, len(ids)), np.nan)
    part = scores[scores["task"] == task]
    for stage, group in part.groupby("stage"):
        values = group.set_index("id")[metric]
        if not values.index.is_unique:
            raise ValueError(f"task {task}, stage {stage}: instance ids repeat")
        missing = set(ids) - set(values.index)
        if missing:
            raise ValueError(f"task {task}, stage {stage}: no score for ids {sorted(missing)[:3]}")
        out[int(stage)] = values.loc[list(ids)].to_numpy(dtype=float)
    return out


def bootstrap_measures(
    scores: pd.DataFrame,
    sequence: Sequence[str],
    unseen: Sequence[str],
    metric: str,
    ids: dict[str, list[str]],
    resamples: int,
    seed: int = 0,
) -> dict[str, np.ndarray]:
    """Each measure recomputed on ``resamples`` resamples of every task's instances (``ids``);
    the same ``seed`` and ids draw the same instances for any run."""
    T = len(sequence)
    rng = np.random.default_rng(seed)
    R = np.full((resamples, T + 1, T), np.nan)
    unseen_final = np.full((resamples, len(unseen)), np.nan)
    for j, task in enumerate([*sequence, *unseen]):
        S = _score_rows(scores, task, ids[task], T + 1, metric)
        draws = rng.integers(0, len(ids[task]), size=(resamples, len(ids[task])))
        finite = np.isfinite(S)
        sums = np.where(finite, S, 0.0)[:, draws].sum(-1)  # (rows, B)
        counts = finite[:, draws].sum(-1)
        with np.errstate(invalid="ignore", divide="ignore"):
            means = np.where(counts > 0, sums / np.maximum(counts, 1), np.nan).T  # (B, rows)
        if j < T:
            R[:, :, j] = means
        else:
            unseen_final[:, j - T] = means[:, T]
    out = {m: np.empty(resamples) for m in MEASURES}
    for b in range(resamples):
        values = continual_metrics(R[b])
        for m in MEASURES:
            if m != "unseen_mean":
                out[m][b] = values[m][0]
    out["unseen_mean"] = unseen_final.mean(axis=1) if unseen else np.full(resamples, np.nan)
    return out


def common_ids(runs: Sequence[pd.DataFrame], tasks: Sequence[str]) -> dict[str, list[str]]:
    """Each task's instance ids, which every run must have scored (the pairing)."""
    ids = {}
    for task in tasks:
        sets = [set(r.loc[(r["task"] == task) & (r["stage"] == 0), "id"]) for r in runs]
        if any(s != sets[0] for s in sets[1:]) or not sets[0]:
            raise ValueError(f"task {task}: the compared runs did not score the same instances")
        ids[task] = sorted(sets[0])
    return ids


def compare_instances(
    instances: dict[str, pd.DataFrame],
    layouts: dict[str, dict],
    baseline: dict,
    resamples: int = stats.RESAMPLES,
    level: float = stats.LEVEL,
    metrics: Sequence[str] | None = None,
) -> pd.DataFrame:
    """Per seed, each run against the baseline run of its sequence and seed: the paired
    bootstrap difference of every measure, its percentile interval, p, Holm's p, the verdict
    and ``mde``: the smallest true difference the bootstrap's z-test detects with 80% power at
    α/m (α = 1 − level, m the tests of the protocol × metric × seed family), from the SD of the
    bootstrap differences, the SE ``p`` uses (:func:`stats.mde_z`).

    ``instances``: run -> its instance scores; ``layouts``: run -> sequence name, tasks, unseen,
    method, strategy, seed (as the aggregate rule's layout); ``metrics`` defaults to the
    generation metrics compared by default (:func:`compared_metrics`)."""
    metrics = list(compared_metrics(["generation"]) if metrics is None else metrics)
    samples = _BootstrapCache(instances, layouts, resamples)
    rows = []
    for run, base in _baseline_pairs(layouts, baseline):
        lay = layouts[run]
        ids = common_ids([instances[run], instances[base]], [*lay["sequence"], *lay["unseen"]])
        for protocol in dict.fromkeys(instances[run]["protocol"]):
            for metric in metrics:
                a = samples.get(run, protocol, metric, ids)
                b = samples.get(base, protocol, metric, ids)
                point_a = _point(instances[run], lay, protocol, metric)
                point_b = _point(instances[base], layouts[base], protocol, metric)
                head = {
                    "sequence": lay["name"],
                    "method": lay["method"],
                    "strategy": lay["strategy"],
                    "seed": lay["seed"],
                    "run": run,
                    "baseline_run": base,
                    "protocol": protocol,
                    "metric": metric,
                }
                for measure in MEASURES:
                    diff = point_a[measure] - point_b[measure]
                    d = a[measure] - b[measure]
                    rows.append({**head, **_paired_row(measure, diff, d, level, resamples)})
    return _with_verdicts(rows, level)


class _BootstrapCache:
    """Each (run, protocol, metric)'s bootstrap measures, computed once: a baseline is compared
    with every other run of its seed."""

    def __init__(self, instances: dict[str, pd.DataFrame], layouts: dict, resamples: int):
        self.instances, self.layouts, self.resamples = instances, layouts, resamples
        self.cache: dict[tuple, dict[str, np.ndarray]] = {}

    def get(self, run: str, protocol: str, metric: str, ids: dict) -> dict[str, np.ndarray]:
        key = (run, protocol, metric)
        if key not in self.cache:
            lay = self.layouts[run]
            part = self.instances[run][self.instances[run]["protocol"] == protocol]
            self.cache[key] = bootstrap_measures(
                part, lay["sequence"], lay["unseen"], metric, ids, self.resamples, seed=lay["seed"]
            )
        return self.cache[key]


def _baseline_pairs(layouts: dict[str, dict], baseline: dict) -> list[tuple[str, str]]:
    """(run, its baseline run) for every run that is not the baseline configuration and has a
    baseline run of the same sequence and seed."""
    key = (baseline["method"], baseline["strategy"])
    pairs = []
    for run, lay in layouts.items():
        if (lay["method"], lay["strategy"]) == key:
            continue
        base = [
            r
            for r, other in layouts.items()
            if other["name"] == lay["name"]
            and other["seed"] == lay["seed"]
            and (other["method"], other["strategy"]) == key
        ]
        if base:
            pairs.append((run, base[0]))
    return pairs


def _paired_row(measure: str, diff: float, d: np.ndarray, level: float, resamples: int) -> dict:
    """One measure's paired difference: the point ``diff`` and its bootstrap samples ``d``."""
    low, high = stats.interval(d, level)
    return {
        "measure": measure,
        "diff": diff,
        "ci_low": low,
        "ci_high": high,
        "p": stats.bootstrap_p(d, diff),
        "resamples": resamples,
        "se": stats.bootstrap_se(d),
    }


def _with_verdicts(rows: list[dict], level: float) -> pd.DataFrame:
    """Holm's p within each protocol × metric × seed family, the verdict and the MDE."""
    columns = [
        "sequence", "method", "strategy", "seed", "run", "baseline_run", "protocol", "metric",
        "measure", "diff", "ci_low", "ci_high", "p", "resamples",
    ]  # fmt: skip
    table = pd.DataFrame(rows, columns=[*columns, "se"])
    family = ["protocol", "metric", "seed"]
    table["p_holm"] = _family_holm(table, family, "p") if len(table) else []
    table["verdict"] = [
        verdict(d, p, level) for d, p in zip(table["diff"], table["p_holm"], strict=True)
    ]
    table["mde"] = _mde(table, family, level, lambda row, a: stats.mde_z(row["se"], a))
    return table.drop(columns="se")


def _point(scores: pd.DataFrame, layout: dict, protocol: str, metric: str) -> dict[str, float]:
    """The measures of one run from its instance scores (equal to its summary's)."""
    part = scores[scores["protocol"] == protocol]
    sequence, unseen = layout["sequence"], layout["unseen"]
    T = len(sequence)
    R = np.full((T + 1, T), np.nan)
    cell = part.groupby(["stage", "task"])[metric].mean()
    for (stage, task), value in cell.items():
        if task in sequence:
            R[int(stage), sequence.index(task)] = value
    values = {m: v[0] for m, v in continual_metrics(R).items()}
    finals = [cell.get((T, t), np.nan) for t in unseen]
    values["unseen_mean"] = float(np.mean(finals)) if unseen else np.nan
    return values
