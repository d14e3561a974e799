"""Summaries as text a researcher reads: "value ± se" tables per protocol, R per metric with the
chance level beneath, and run-versus-baseline comparisons that say plainly what is noise."""

from __future__ import annotations

import math

import pandas as pd

from .aggregate import PROTOCOLS, matrix
from .metrics import CONTINUAL_METRICS


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
    lines = [f"Run: {run} (T = {T} tasks; scores on a 0-100 scale)"]
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
        "Differences smaller than ~2 se (twice the ± value) are within noise.",
    ]
    return "\n".join(lines) + "\n"


def format_matrix(cells: pd.DataFrame, metric: str) -> str:
    """R for one metric as "score±se" per cell, with each task's majority-class rate beneath.

    The majority rate is the score of always answering the commonest label: the chance level a
    classification score must be read against.
    """
    scores, errors = matrix(cells, metric), matrix(cells, metric, "stderr")
    text = scores.copy().astype(object)
    for stage in scores.index:
        for task in scores.columns:
            v, se = scores.loc[stage, task], errors.loc[stage, task]
            text.loc[stage, task] = "n/a" if pd.isna(v) else f"{v:.1f}±{se:.1f}"
    majority = cells[cells["metric"] == metric].groupby("task")["majority_rate"].first()
    text.loc["majority"] = [
        "-" if pd.isna(majority.get(t)) else f"{majority[t]:.1f}" for t in scores.columns
    ]
    return f"R[stage, task] for {metric} (± binomial/sample standard error):\n{text.to_string()}\n"


def compare_runs(
    summary: pd.DataFrame,
    metric: str,
    baseline: str | None = None,
    protocol: str = "original_prompt",
) -> str:
    """Each run's AP against the first (baseline) run, saying plainly when it is within noise.

    The difference's SE treats the runs as independent (sqrt(se1² + se2²)); within 2 SE is
    reported as "within noise", never as a win.
    """
    rows = summary[summary["metric"] == metric]
    if "protocol" in rows:
        rows = rows[rows["protocol"] == protocol]
    rows = rows.reset_index(drop=True)
    if rows.empty:
        return ""
    base = rows.iloc[0] if baseline is None else rows[rows["run"] == baseline].iloc[0]
    lines = [f"AP ({metric}, {protocol}) against {base['run']}:"]
    for _, row in rows.iterrows():
        if row["run"] == base["run"]:
            continue
        diff = row["AP"] - base["AP"]
        se = math.sqrt(row["AP_se"] ** 2 + base["AP_se"] ** 2)
        verdict = "within noise" if abs(diff) < 2 * se else ("higher" if diff > 0 else "lower")
        lines.append(f"  {row['run']}: {diff:+.2f} ± {se:.2f} ({verdict})")
    return "\n".join(lines) + "\n"
