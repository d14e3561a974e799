"""Summaries as text a researcher reads: "value ± se" tables per protocol, R per metric with the
chance level beneath, and run-versus-baseline comparisons that say plainly what is noise."""

from __future__ import annotations

import math
from collections.abc import Mapping

import pandas as pd

from promptcl.analysis.aggregate import PROTOCOLS, matrix
from promptcl.analysis.metrics import CONTINUAL_METRICS, REGISTRY
from promptcl.analysis.metrics import metric as spec_of


def _fmt(value: float, se: float) -> str:
    if value is None or math.isnan(value):
        return "n/a"
    if se is None or math.isnan(se):
        return f"{value:.2f} ± n/a"
    return f"{value:.2f} ± {se:.2f}"


def format_summary(summary: pd.DataFrame, run: str) -> str:
    """Markdown tables of "value ± se" per metric (one per protocol), with a reminder of what
    counts as noise."""
    columns = [*CONTINUAL_METRICS, "unseen_mean"]
    T = int(summary["T"].iloc[0]) if len(summary) else 0
    metrics = dict.fromkeys(summary["metric"]) if "metric" in summary else {}
    unbounded = [m for m in metrics if not spec_of(m).bounded]
    scale = "scores on a 0-100 scale" + "".join(f", {m} in {spec_of(m).unit}" for m in unbounded)
    lines = [f"Run: {run} (T = {T} tasks; {scale})"]
    groups = summary.groupby("protocol", sort=False) if "protocol" in summary else [(None, summary)]
    for protocol, part in groups:
        if protocol is not None:
            lines += ["", f"{protocol}: {PROTOCOLS.get(protocol, protocol)}"]
        lines += ["", "| metric | " + " | ".join(columns) + " |", "|---|" + "---|" * len(columns)]
        for _, row in part.iterrows():
            cells = [_fmt(float(row[c]), float(row[f"{c}_se"])) for c in columns]
            lines.append(f"| {row['metric']} | " + " | ".join(cells) + " |")
    lines += [
        "",
        "Two runs differ beyond noise only above ~2 se of their difference, se = √(se_a² + se_b²)",
        "(≈ 1.4 × the ± value when equal). Runs on the same test items are compared paired, more",
        "tightly: results/comparisons.parquet, comparisons_by_seed.parquet, results/summary.txt.",
    ]
    return "\n".join(lines) + "\n"


def format_matrix(cells: pd.DataFrame, metric: str) -> str:
    """R for one metric as "score±se" per cell, with each task's majority-class rate beneath.

    The majority rate is the score of always answering the commonest label: the chance level a
    classification score must be read against.
    """
    scores, errors = matrix(cells, metric), matrix(cells, metric, "stderr")
    text = scores.copy().astype(object)
    digits = spec_of(metric).decimals
    for stage in scores.index:
        for task in scores.columns:
            v, se = scores.loc[stage, task], errors.loc[stage, task]
            text.loc[stage, task] = "n/a" if pd.isna(v) else f"{v:.{digits}f}±{se:.{digits}f}"
    majority = cells[cells["metric"] == metric].groupby("task")["majority_rate"].first()
    text.loc["majority"] = [
        "-" if pd.isna(majority.get(t)) else f"{majority[t]:.1f}" for t in scores.columns
    ]
    unit = spec_of(metric).unit
    return (
        f"R[stage, task] for {metric}, {unit} (± binomial/sample standard error):\n"
        f"{text.to_string()}\n"
    )


SHOWN = ("AP", "BWT", "FWT", "plasticity", "ACC", "unseen_mean")


def _interval(low: float, high: float, digits: int = 2) -> str:
    return "n/a" if pd.isna(low) or pd.isna(high) else f"[{low:+.{digits}f}, {high:+.{digits}f}]"


def format_seeds(seeds: pd.DataFrame, metric: str) -> str:
    """Each configuration's measures over its seeds: mean [t interval] (n)."""
    part = seeds[seeds["metric"] == metric]
    if part.empty:
        return ""
    lines = [f"Configurations over seeds ({metric}): mean [95% t interval] (n seeds)"]
    keys = ["sequence", "method", "strategy", "protocol"]
    for key, group in part.groupby(keys, sort=False):
        cells = []
        for _, row in group[group["measure"].isin(SHOWN)].iterrows():
            if pd.isna(row["mean"]):
                continue
            interval = "" if row["n"] < 2 else f" [{row['ci_low']:.1f}, {row['ci_high']:.1f}]"
            cells.append(f"{row['measure']} {row['mean']:.1f}{interval}")
        n = int(group["n"].max())
        lines.append(f"  {'/'.join(map(str, key))} (n={n}): " + "; ".join(cells))
    return "\n".join(lines) + "\n"


def readable_verdict(row: Mapping | pd.Series) -> str:
    """A comparison's verdict as a reader should see it: "within noise" says what the test could
    have detected (its ``mde``, in the metric's points), so a null result is not read as "no
    difference". The stored ``verdict`` values stay as they are (code filters on them)."""
    verdict = str(row.get("verdict", "n/a"))
    mde = row.get("mde", float("nan"))
    metric = row.get("metric")
    digits = spec_of(metric).decimals if metric in REGISTRY else 1
    if verdict == "within noise" and mde is not None and math.isfinite(float(mde)):
        return f"within noise (could detect ≥ {float(mde):.{digits}f})"
    return verdict


def format_comparisons(comparisons: pd.DataFrame, metric: str) -> str:
    """Each configuration minus the baseline, paired: difference [interval], Holm's p and the
    verdict (higher/lower only when the interval excludes 0; within noise with the smallest
    difference the test detects with 80% power)."""
    part = comparisons[(comparisons["metric"] == metric) & comparisons["measure"].isin(SHOWN)]
    if part.empty:
        return ""
    base = part["baseline"].iloc[0]
    digits = spec_of(metric).decimals
    lines = [
        f"Against {base} ({metric}), paired; Holm-corrected per protocol and metric",
        f"(could detect ≥ X: a true difference of X, in {spec_of(metric).unit}, is called with "
        "80% power):",
    ]
    for key, group in part.groupby(["sequence", "method", "strategy", "protocol"], sort=False):
        lines.append(f"  {'/'.join(map(str, key))} ({group['basis'].iloc[0]}):")
        for _, row in group.iterrows():
            if pd.isna(row["diff"]):
                continue
            lines.append(
                f"    {row['measure']:<12} {row['diff']:+7.{max(digits, 2)}f} "
                f"{_interval(row['ci_low'], row['ci_high'], max(digits, 2)):>18}  p_holm "
                f"{row['p_holm']:.3f}  {readable_verdict(row)}"
            )
    return "\n".join(lines) + "\n"
