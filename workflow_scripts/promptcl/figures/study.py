"""Figures of the prompt-impact study, one per analysis of :mod:`promptcl.study.analysis`
(the SAPO paper's Figures 1-4), every estimate with its 95% interval (chi-square for the
spread's SD, percentile bootstrap otherwise)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from promptcl.figures.style import COLORS, new_figure, save

ROLE_COLORS = {"T2": "#1f77b4", "T2_trained": "#17becf", "T1": "#d62728", "unseen": "#ff7f0e"}


def _errors(values, low, high) -> np.ndarray:
    values, low, high = (np.asarray(v, dtype=float) for v in (values, low, high))
    return np.nan_to_num(np.vstack([values - low, high - values]).clip(min=0))


def spread_figure(spread: pd.DataFrame, path: Path) -> Path:
    """(a) SD across candidates of each outcome (in-task: blue; forgetting of T1: red;
    unseen tasks: orange), one panel per branch."""
    branches = sorted(spread["branch"].unique())
    fig, axes = new_figure(
        1, len(branches), width=max(4.0, 0.9 * spread["task"].nunique() + 2), height=3.8
    )
    for ax, branch in zip(axes[0], branches, strict=True):
        part = spread[spread["branch"] == branch].reset_index(drop=True)
        colours = [ROLE_COLORS.get(role, "#7f7f7f") for role in part["role"]]
        ax.bar(
            range(len(part)),
            part["sd"],
            yerr=_errors(part["sd"], part["sd_ci_low"], part["sd_ci_high"]),
            color=colours,
            capsize=3,
        )
        labels = [f"{r}\n{t}" for r, t in zip(part["role"], part["task"], strict=True)]
        ax.set_xticks(range(len(part)), labels, fontsize=7, rotation=30, ha="right")
        metric = part["metric"].iloc[0]
        ax.set_ylabel(f"SD of {metric} across candidates (points)")
        ax.set_title(f"{branch} ({int(part['candidates'].max())} candidates)", fontsize=8)
    fig.suptitle(
        "(a) Spread of outcomes across T2's training prompts\n(error bars: 95% chi-square)",
        fontsize=10,
    )
    return save(fig, path)


def correlation_heatmap(correlations: pd.DataFrame, kind: str, path: Path) -> Path:
    """(b) Correlation between the outcomes' changes across candidates, averaged over branches
    (each cell annotated with r)."""
    part = correlations[correlations["kind"] == kind]
    mean = part.groupby(["outcome_a", "outcome_b"])["r"].mean()
    names = sorted(set(part["outcome_a"]) | set(part["outcome_b"]))
    grid = np.eye(len(names))
    for (a, b), r in mean.items():
        i, j = names.index(a), names.index(b)
        grid[i, j] = grid[j, i] = r
    fig, axes = new_figure(1, 1, width=1.0 * len(names) + 3, height=0.9 * len(names) + 2)
    ax = axes[0][0]
    image = ax.imshow(grid, vmin=-1, vmax=1, cmap="RdBu_r")
    for (i, j), r in np.ndenumerate(grid):
        colour = "white" if not np.isnan(r) and abs(r) > 0.6 else "black"  # readable on dark
        text = "n/a" if np.isnan(r) else f"{r:.2f}"
        ax.text(j, i, text, ha="center", va="center", fontsize=8, color=colour)
    ax.set_xticks(range(len(names)), names, rotation=40, ha="right", fontsize=7)
    ax.set_yticks(range(len(names)), names, fontsize=7)
    fig.colorbar(image, ax=ax, label=f"{kind} r (change against the original prompt)")
    ax.set_title(f"(b) Outcome correlations across candidates ({kind})", fontsize=9)
    return save(fig, path)


def predictor_bars(predictors: pd.DataFrame, path: Path) -> Path:
    """(c) Mean correlation of each pre-update measurement with the cross-task outcomes, best
    first, Pearson and Spearman side by side with their intervals."""
    mean = predictors[predictors["scope"] == "mean"]
    order = mean.sort_values("rank")["measurement"].drop_duplicates().tolist()
    labels = mean.drop_duplicates("measurement").set_index("measurement")["label"]
    fig, axes = new_figure(1, 1, width=8.5, height=0.45 * len(order) + 1.8)
    ax = axes[0][0]
    height = 0.38
    for k, kind in enumerate(("pearson", "spearman")):
        rows = mean[mean["kind"] == kind].set_index("measurement").reindex(order)
        y = np.arange(len(order)) + (k - 0.5) * height
        ax.barh(
            y,
            rows["r"],
            height=height,
            xerr=_errors(rows["r"], rows["ci_low"], rows["ci_high"]),
            color=COLORS[k],
            capsize=2,
            label=kind,
        )
        for where, r in zip(y, rows["r"], strict=True):
            if np.isnan(r):  # an outcome or measurement that did not vary across candidates
                ax.text(0.02, where, "n/a", va="center", fontsize=7, color=COLORS[k])
    ax.set_yticks(range(len(order)), [labels[m] for m in order], fontsize=8)
    ax.invert_yaxis()
    ax.axvline(0, color="black", linewidth=0.7)
    ax.set_xlim(-1, 1)
    ax.set_xlabel("correlation with the change of T1 and unseen-task scores (mean over tasks)")
    ax.legend(fontsize=8)
    ax.set_title("(c) Which pre-update measurement predicts cross-task effects", fontsize=9)
    return save(fig, path)


def gradient_violins(groups: pd.DataFrame, path: Path) -> Path:
    """(d) Per module type, the distribution over layers of the cosine between T2's gradient
    (with the lowest- / highest-loss prompt) and T1's gradient."""
    modules = sorted(groups["module"].unique())
    fig, axes = new_figure(1, 1, width=2.2 * len(modules) + 2, height=3.8)
    ax = axes[0][0]
    for g, (group, colour) in enumerate((("lowest_loss", "#2ca02c"), ("highest_loss", "#d62728"))):
        data = [
            groups[(groups["group"] == group) & (groups["module"] == m)]["cosine"].to_numpy()
            for m in modules
        ]
        where = [i + (g - 0.5) * 0.4 for i in range(len(modules))]
        present = [(w, d) for w, d in zip(where, data, strict=True) if len(d)]
        if not present:
            continue
        parts = ax.violinplot([d for _, d in present], [w for w, _ in present], widths=0.35)
        for body in parts["bodies"]:
            body.set_facecolor(colour)
            body.set_alpha(0.5)
        ax.scatter([], [], color=colour, label=group.replace("_", " ") + " candidate")
    ax.axhline(0, color="black", linewidth=0.7)
    ax.set_xticks(range(len(modules)), modules)
    ax.set_ylabel("cosine(∇ T2 loss, ∇ T1 loss) per layer")
    ax.legend(fontsize=8)
    ax.set_title("(d) Gradient alignment with T1, per module", fontsize=9)
    return save(fig, path)
