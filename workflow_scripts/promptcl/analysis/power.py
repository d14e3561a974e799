"""How much data a comparison needs: the per-item noise of each metric, measured on a results
folder, turned into the test items per task and the seeds that resolve a given AP difference
(``python -m promptcl power results``).

Two sources of noise bound a claim. Within a seed, two runs answer the same test items, so
their AP difference varies with the items drawn: its variance is the mean over tasks of the
per-item variance of the paired differences, divided by T tasks × n items per task. Across
seeds, the training itself varies: the SD of a configuration's per-seed AP differences sets the
seeds a paired t-test needs (:func:`promptcl.analysis.stats.mde_t`). Both at 80% power and a
two-sided
α = 0.05 for one comparison (a Holm family of m comparisons needs α/m: more items and seeds).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pandas as pd

from promptcl.analysis import stats
from promptcl.analysis.metrics import REGISTRY
from promptcl.store import paths

ALPHA = 0.05
#: AP differences the table resolves, in each metric's unit: points for 0-100 metrics, nats
#: per token for the log-likelihood (about the same fraction of the scores' observed spread)
DELTAS = {True: (2.0, 5.0), False: (0.02, 0.05)}


def items_needed(sd_item: float, tasks: int, delta: float, alpha: float = ALPHA) -> float:
    """Test items per task for a paired AP difference of ``delta`` at 80% power (normal
    approximation): n = ((z_{1−α/2} + z_power)·sd / delta)² / T, rounded up."""
    from scipy import stats as st

    if not np.isfinite(sd_item) or sd_item <= 0 or tasks < 1:
        return math.nan
    z = st.norm.ppf(1 - alpha / 2) + st.norm.ppf(stats.POWER)
    return float(math.ceil((z * sd_item / delta) ** 2 / tasks))


def seeds_needed(sd_seed: float, delta: float, alpha: float = ALPHA, most: int = 1000) -> float:
    """The fewest seeds whose paired t-test detects ``delta`` at 80% power, given the SD of the
    per-seed differences (exact noncentral t); NaN without a finite positive SD."""
    if not np.isfinite(sd_seed) or sd_seed <= 0:
        return math.nan
    for n in range(2, most + 1):
        if stats.mde_t(sd_seed, n, alpha) <= delta:
            return float(n)
    return math.inf


def paired_item_sd(a: pd.DataFrame, b: pd.DataFrame, metric: str, stage: int) -> float:
    """Root mean over tasks of the per-item variance of the paired difference a − b after
    ``stage`` (the items both runs scored; instance-score tables of one protocol)."""
    keys = ["task", "id"]
    left = a[a["stage"] == stage][[*keys, metric]]
    right = b[b["stage"] == stage][[*keys, metric]]
    both = left.merge(right, on=keys, suffixes=("_a", "_b")).dropna()
    if both.empty:
        return math.nan
    diff = both[f"{metric}_a"] - both[f"{metric}_b"]
    variances = diff.groupby(both["task"]).var(ddof=1).dropna()
    return float(np.sqrt(variances.mean())) if len(variances) else math.nan


def item_sd(scores: pd.DataFrame, metric: str, stage: int) -> float:
    """Root mean over tasks of the per-item variance of the scores after ``stage``."""
    part = scores[scores["stage"] == stage][["task", metric]].dropna()
    variances = part.groupby("task")[metric].var(ddof=1).dropna()
    return float(np.sqrt(variances.mean())) if len(variances) else math.nan


def power_table(
    instances: dict[str, pd.DataFrame],
    summary: pd.DataFrame,
    baseline: str,
    tasks: Sequence[str],
    protocol: str = "original_prompt",
) -> pd.DataFrame:
    """Per metric, each run against ``baseline`` (runs of one sequence: their instance scores
    and summaries) and each AP difference ``delta`` of :data:`DELTAS` (in the metric's unit):
    the per-item SDs, the items per task (paired within a seed) and the seeds (paired across
    seeds, from the summaries) that resolve it. ``tasks`` are the sequence's tasks (AP averages
    over them)."""
    T = len(tasks)
    rows = []
    base = instances[baseline][instances[baseline]["protocol"] == protocol]
    base = base[base["task"].isin(tasks)]
    final = int(base["stage"].max())
    for metric in [m for m in REGISTRY if m in base.columns]:
        bounded = REGISTRY[metric].bounded
        for run, scores in instances.items():
            if run == baseline:
                continue
            part = scores[(scores["protocol"] == protocol) & scores["task"].isin(tasks)]
            row = {
                "metric": metric,
                "unit": REGISTRY[metric].unit,
                "run": run,
                "baseline": baseline,
                "item_sd": item_sd(base, metric, final),
                "paired_item_sd": paired_item_sd(part, base, metric, final),
                "seed_sd": _seed_sd(summary, run, baseline, metric, protocol),
            }
            for delta in DELTAS[bounded]:
                rows.append(
                    {
                        **row,
                        "delta": delta,
                        "items_per_task": items_needed(row["paired_item_sd"], T, delta),
                        "seeds": seeds_needed(row["seed_sd"], delta),
                    }
                )
    return pd.DataFrame(rows)


def _seed_sd(summary: pd.DataFrame, run: str, baseline: str, metric: str, protocol: str) -> float:
    """SD over seeds of the AP difference between ``run``'s configuration and the baseline's
    (NaN with fewer than 2 shared seeds)."""
    part = summary[(summary["metric"] == metric) & (summary["protocol"] == protocol)]
    config = part[part["run"] == run][["sequence", "method", "strategy"]]
    base = part[part["run"] == baseline][["sequence", "method", "strategy"]]
    if config.empty or base.empty:
        return math.nan

    def per_seed(row) -> pd.Series:
        same = (part[["sequence", "method", "strategy"]] == row.iloc[0]).all(axis=1)
        return part[same].set_index("seed")["AP"]

    diffs = (per_seed(config) - per_seed(base)).dropna()
    return float(diffs.std(ddof=1)) if len(diffs) >= 2 else math.nan


def report(results: Path) -> str:
    """The power table of a results folder: every run against the comparison baseline of its
    sequence and seed (as ``compare_runs`` pairs them), as text."""
    summary = pd.read_parquet(results / Path(paths.SUMMARY).name)
    comparisons = pd.read_parquet(results / Path(paths.COMPARISONS).name)
    baseline = comparisons["baseline"].iloc[0] if len(comparisons) else None
    if baseline is None:
        raise ValueError(f"{results}: no comparison with a baseline (comparisons.parquet is empty)")
    method, strategy = baseline.split("/")
    parts = []
    first = summary.drop_duplicates("run")
    for (sequence, seed), runs in first.groupby(["sequence", "seed"]):
        base = runs[(runs["method"] == method) & (runs["strategy"] == strategy)]["run"]
        if base.empty:
            continue
        instances = {
            run: pd.read_parquet(results / run / "metrics" / Path(paths.INSTANCE_SCORES).name)
            for run in runs["run"]
        }
        tasks = _sequence_tasks(results, base.iloc[0])
        table = power_table(instances, summary, base.iloc[0], tasks)
        parts.append(table.assign(sequence=sequence, seed=seed))
    if not parts:
        raise ValueError(f"{results}: no run of the baseline {baseline}")
    table = pd.concat(parts, ignore_index=True)
    with pd.option_context("display.width", 160, "display.max_columns", None):
        body = table.round(4).to_string(index=False)
    return (
        "Per-item SD of each metric after the last stage (item_sd: one run's scores; "
        "paired_item_sd: the difference from the baseline on the same items), the SD over "
        "seeds of the AP difference (seed_sd, NaN with one seed), and the test items per task "
        "and the seeds that resolve an AP difference of delta (in the metric's unit) at 80% "
        f"power, two-sided alpha {ALPHA} (one comparison):\n{body}\n"
    )


def _sequence_tasks(results: Path, run: str) -> list[str]:
    cells = pd.read_parquet(results / run / "metrics" / Path(paths.MATRIX).name)
    return list(dict.fromkeys(cells.loc[cells["role"] == "sequence", "task"]))
