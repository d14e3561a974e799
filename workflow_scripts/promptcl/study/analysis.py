"""The study's tables: outcomes per candidate, and the four analyses of the SAPO paper's Section 3
((a) spread, (b) outcome correlations, (c) pre-update predictors, (d) gradient cosines), with
intervals over candidates (torch-free; numbers from :mod:`promptcl.analysis.stats`).

Roles of an outcome task in a branch: ``T1`` (trained first: forgetting), ``T2`` (trained with
the candidate, evaluated with the original prompt), ``T2_trained`` (evaluated with the prompt it
was trained with, the paper's protocol) and ``unseen`` (never trained: generalisation).
"""

from __future__ import annotations

from collections.abc import Mapping
from itertools import combinations

import numpy as np
import pandas as pd

from promptcl.analysis.stats import (
    CORRELATIONS,
    BranchSample,
    bootstrap_ci,
    correlation_row,
    mean_correlation_ci,
    sd_interval,
    spread,
)

OUTCOME_COLUMNS = (
    "branch",
    "candidate_id",
    "task",
    "role",
    "metric",
    "score",
    "delta",
    "relative",
)
#: Roles that training T2 does not target: their outcomes are the cross-task effects.
CROSS_TASK = ("T1", "unseen")
#: Pre-update measurements as predictors, oriented so that higher should mean better (the
#: paper's "negative task loss"), with the label the figures use.
PREDICTORS: dict[str, tuple[str, int]] = {
    "loss_batch_mean": ("−loss (batch mean, SAPO's criterion)", -1),
    "loss_instance_mean": ("−loss (instance mean)", -1),
    "loss_token_mean": ("−loss (token mean)", -1),
    "instruction_perplexity": ("−instruction perplexity", -1),
    "answer_accuracy": ("answer-token accuracy (teacher forced)", 1),
    "zero_shot_score": ("zero-shot score with the prompt", 1),
    "grad_norm": ("−gradient norm", -1),
    "grad_cosine": ("gradient cosine with T1", 1),
    "prompt_tokens": ("−prompt length (tokens)", -1),
    "rouge_to_original": ("ROUGE-L to the original", 1),
    "fk_grade": ("−Flesch–Kincaid grade", -1),
}


def outcome_table(
    branch: str,
    matrices: Mapping[int, pd.DataFrame],
    t1: str,
    t2: str,
    unseen: list[str],
) -> pd.DataFrame:
    """Per candidate (its cell's accuracy matrix after stage 2): every task's score, its change
    against the original-prompt cell (``delta``, points) and relative to it (``relative``,
    delta / original score; NaN when that is 0)."""
    if 0 not in matrices:
        raise ValueError(
            f"study branch {branch}: the original-prompt cell (candidate 0) is missing"
        )
    rows = []
    for cid, cells in matrices.items():
        final = cells[cells["stage"] == cells["stage"].max()]
        for protocol, task, role in [
            ("original_prompt", t1, "T1"),
            ("original_prompt", t2, "T2"),
            ("trained_prompt", t2, "T2_trained"),
            *[("original_prompt", u, "unseen") for u in unseen],
        ]:
            part = final[(final["protocol"] == protocol) & (final["task"] == task)]
            if part.empty:
                raise ValueError(f"study branch {branch}: candidate {cid} has no {protocol} {task}")
            for _, cell in part.iterrows():
                rows.append((branch, int(cid), task, role, cell["metric"], float(cell["score"])))
    table = pd.DataFrame(rows, columns=OUTCOME_COLUMNS[:6])
    keys = ["branch", "task", "role", "metric"]
    base = table[table["candidate_id"] == 0].set_index(keys)["score"]
    reference = table.set_index(keys).index.map(base)
    table["delta"] = table["score"].to_numpy() - reference.to_numpy(float)
    with np.errstate(divide="ignore", invalid="ignore"):
        relative = table["delta"].to_numpy() / reference.to_numpy(float)
    table["relative"] = np.where(reference.to_numpy(float) == 0, np.nan, relative)
    return table.sort_values(["candidate_id", "role", "task", "metric"]).reset_index(drop=True)


def _wide(outcomes: pd.DataFrame, metric: str, value: str) -> pd.DataFrame:
    """candidate × "role:task" table of one metric."""
    part = outcomes[outcomes["metric"] == metric].copy()
    part["outcome"] = part["role"] + ":" + part["task"]
    return part.pivot(index="candidate_id", columns="outcome", values=value).sort_index()


def spread_table(outcomes: pd.DataFrame, metric: str) -> pd.DataFrame:
    """(a) Per branch and outcome: range (max − min) and SD of the score across candidates, the
    SD with its chi-square interval. The range has none: a resample's range never exceeds the
    observed one, so a bootstrap interval of it says nothing."""
    rows = []
    for branch, part in outcomes.groupby("branch", sort=True):
        wide = _wide(part, metric, "score")
        for outcome in wide.columns:
            values = wide[outcome].dropna().to_numpy()
            role, task = outcome.split(":", 1)
            found = spread(values)
            s_low, s_high = sd_interval(values)
            rows.append(
                {
                    "branch": branch,
                    "role": role,
                    "task": task,
                    "metric": metric,
                    "candidates": len(values),
                    "range": found["range"],
                    "sd": found["sd"],
                    "sd_ci_low": s_low,
                    "sd_ci_high": s_high,
                    "in_task": role in ("T2", "T2_trained"),
                }
            )
    return pd.DataFrame(rows)


def outcome_correlations(outcomes: pd.DataFrame, metric: str, resamples: int, seed: int = 0):
    """(b) Pearson and Spearman correlation of every pair of outcomes across candidates (on
    ``delta``, the change against the original prompt), per branch."""
    rows = []
    for branch, part in outcomes.groupby("branch", sort=True):
        wide = _wide(part, metric, "delta")
        for a, b in combinations(wide.columns, 2):
            both = wide[[a, b]].dropna()
            for kind in CORRELATIONS:
                rows.append(
                    {
                        "branch": branch,
                        "outcome_a": a,
                        "outcome_b": b,
                        "metric": metric,
                        "kind": kind,
                        **correlation_row(both[a], both[b], kind, seed, resamples),
                    }
                )
    return pd.DataFrame(rows)


def predictor_table(
    measures: pd.DataFrame, outcomes: pd.DataFrame, metric: str, resamples: int, seed: int = 0
) -> pd.DataFrame:
    """(c) Correlation of each pre-update measurement (oriented: higher = predicted better) with
    each cross-task outcome's ``delta`` (T1 and unseen tasks), per branch and task
    (``scope = "task"``), then averaged over all of them (``scope = "mean"``; its interval
    resamples each branch's candidates once for all its tasks, :func:`mean_correlation_ci`);
    sorted best predictor first by the mean Spearman correlation."""
    rows, branches = [], {}
    cross = outcomes[(outcomes["metric"] == metric) & outcomes["role"].isin(CROSS_TASK)]
    available = [m for m in PREDICTORS if m in measures.columns]
    for branch, part in cross.groupby("branch", sort=True):
        # candidate × (role, task): one row per candidate, so every task sees the same draw
        deltas = part.pivot(index="candidate_id", columns=["role", "task"], values="delta")
        values = measures[measures["branch"] == branch].set_index("candidate_id")
        candidates = deltas.index.intersection(values.index).sort_values()
        for measure in available:
            label, sign = PREDICTORS[measure]
            measured = values.loc[candidates, measure].dropna()
            x = sign * measured.to_numpy(float)
            ys = [deltas.loc[measured.index, o].to_numpy(float) for o in deltas.columns]
            branches.setdefault(measure, []).append(BranchSample(measured.index.to_numpy(), x, ys))
            for (role, task), y in zip(deltas.columns, ys, strict=True):
                keep = np.isfinite(y)
                for kind in CORRELATIONS:
                    rows.append(
                        {
                            "scope": "task",
                            "branch": branch,
                            "role": role,
                            "task": task,
                            "measurement": measure,
                            "label": label,
                            "kind": kind,
                            **correlation_row(x[keep], y[keep], kind, seed, resamples),
                        }
                    )
    for measure, groups in branches.items():
        for kind in CORRELATIONS:
            rows.append(
                {
                    "scope": "mean",
                    "branch": "all",
                    "role": "cross-task",
                    "task": "all",
                    "measurement": measure,
                    "label": PREDICTORS[measure][0],
                    "kind": kind,
                    **mean_correlation_ci(groups, kind, resamples, seed=seed),
                }
            )
    table = pd.DataFrame(rows)
    if table.empty:
        return table
    order = (
        table[(table["scope"] == "mean") & (table["kind"] == "spearman")]
        .sort_values("r", ascending=False)["measurement"]
        .tolist()
    )
    table["rank"] = table["measurement"].map({m: i + 1 for i, m in enumerate(order)})
    return table.sort_values(["rank", "scope", "kind", "branch", "task"]).reset_index(drop=True)


def gradient_groups(
    measures: pd.DataFrame, gradients: pd.DataFrame, resamples: int, seed: int = 0
) -> pd.DataFrame:
    """(d) Per branch, the per-layer gradient cosines (T2 with the prompt vs T1) per module of
    the lowest- and the highest-loss candidate (SAPO's criterion), with the mean's bootstrap
    interval over layers."""
    rows = []
    for branch, part in measures.groupby("branch", sort=True):
        ranked = part.sort_values(["loss_batch_mean", "candidate_id"])
        chosen = {
            "lowest_loss": int(ranked["candidate_id"].iloc[0]),
            "highest_loss": int(ranked["candidate_id"].iloc[-1]),
        }
        for group, cid in chosen.items():
            layers = gradients[(gradients["branch"] == branch) & (gradients["candidate_id"] == cid)]
            for module, by_module in layers.groupby("module", sort=True):
                values = by_module.sort_values("layer")["cosine"].to_numpy(float)
                low, high = bootstrap_ci(values, np.mean, resamples, seed=seed)
                for layer, value in zip(
                    by_module.sort_values("layer")["layer"], values, strict=True
                ):
                    rows.append(
                        {
                            "branch": branch,
                            "group": group,
                            "candidate_id": cid,
                            "module": module,
                            "layer": int(layer),
                            "cosine": float(value),
                            "module_mean": float(values.mean()),
                            "module_ci_low": low,
                            "module_ci_high": high,
                        }
                    )
    return pd.DataFrame(rows)
