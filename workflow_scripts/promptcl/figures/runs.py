"""Figures of one run and across runs: what a researcher looks at first.

Each function takes the run's own artifacts as tables (the accuracy matrix, train logs, prompt
scores, the summary) and writes one PNG. Scores are on a 0-100 scale; the majority-class rate
(the score of always answering the commonest label) is drawn as the chance level where it exists.
"""

from __future__ import annotations

import math
import textwrap
from collections.abc import Mapping
from pathlib import Path

import numpy as np
import pandas as pd

from promptcl.analysis.aggregate import PROTOCOLS, matrix
from promptcl.analysis.metrics import metric as spec_of
from promptcl.analysis.summary_text import readable_verdict
from promptcl.figures.style import COLORS, new_figure, save

#: The summary's measures compared across runs (each has a standard-error column).
COMPARED = ("AP", "BWT", "FWT", "F", "plasticity", "ACC", "unseen_mean")
Z95 = 1.959964


def axis_label(metric: str) -> str:
    """The metric with its unit, e.g. "rougeL (points (0-100))" → "rougeL (0-100)"."""
    unit = spec_of(metric).unit
    return f"{metric} (0-100)" if spec_of(metric).bounded else f"{metric} ({unit})"


def value_range(metric: str, values: np.ndarray) -> tuple[float, float]:
    """The colour scale of R: 0-100 for bounded metrics, else the finite values' own range."""
    if spec_of(metric).bounded:
        return 0.0, 100.0
    finite = values[np.isfinite(values)]
    if not len(finite):
        return 0.0, 1.0
    low, high = float(finite.min()), float(finite.max())
    return (low, high) if high > low else (low - 0.5, high + 0.5)


def _protocols(cells: pd.DataFrame) -> list[str]:
    return list(dict.fromkeys(cells["protocol"])) if "protocol" in cells else [None]


def _of_protocol(cells: pd.DataFrame, protocol: str | None) -> pd.DataFrame:
    return cells if protocol is None else cells[cells["protocol"] == protocol]


def matrix_heatmaps(cells: pd.DataFrame, metrics: list[str], title: str, path: Path) -> Path:
    """R (after stage i × task j) per metric (rows) and protocol (columns), each cell annotated
    with its score; the x labels carry each task's chance level."""
    protocols = _protocols(cells)
    fig, axes = new_figure(len(metrics), len(protocols), width=4.6, height=3.4)
    for r, metric in enumerate(metrics):
        for c, protocol in enumerate(protocols):
            ax = axes[r][c]
            part = _of_protocol(cells, protocol)
            scores = matrix(part, metric)
            values = scores.to_numpy(float)
            low, high = value_range(metric, values)
            image = ax.imshow(values, vmin=low, vmax=high, cmap="viridis")
            decimals = max(spec_of(metric).decimals - 1, 0)
            for (i, j), value in np.ndenumerate(values):
                if not math.isnan(value):
                    colour = "white" if value < low + 0.55 * (high - low) else "black"
                    ax.text(j, i, f"{value:.{decimals}f}", ha="center", va="center", color=colour)
            chance = part[part["metric"] == metric].groupby("task")["majority_rate"].first()
            labels = [
                t if pd.isna(chance.get(t)) else f"{t}\n(chance {chance[t]:.0f})"
                for t in scores.columns
            ]
            ax.set_xticks(range(len(labels)), labels, fontsize=7, rotation=30, ha="right")
            ax.set_yticks(range(len(scores.index)), [str(s) for s in scores.index])
            ax.set_xlabel("evaluated task")
            ax.set_ylabel("after stage (0 = base model)")
            ax.set_title(f"{metric}, {protocol or ''}", fontsize=9)
            fig.colorbar(image, ax=ax, label=axis_label(metric), shrink=0.8)
    fig.suptitle(title)
    return save(fig, path)


def forgetting_curves(cells: pd.DataFrame, metric: str, title: str, path: Path) -> Path:
    """Each task's score across stages (one line per task, its chance level dashed in the same
    colour); the stage a task was trained at is marked."""
    protocols = _protocols(cells)
    fig, axes = new_figure(1, len(protocols), width=5.5, height=3.6)
    for c, protocol in enumerate(protocols):
        ax = axes[0][c]
        part = _of_protocol(cells, protocol)
        scores = matrix(part, metric)
        sub = part[part["metric"] == metric]
        roles = sub.groupby("task")["role"].first() if "role" in sub else {}
        chance = sub.groupby("task")["majority_rate"].first()
        for k, task in enumerate(scores.columns):
            colour = COLORS[k % len(COLORS)]
            unseen = roles.get(task, "sequence") != "sequence"
            ax.plot(
                scores.index,
                scores[task],
                marker="o",
                color=colour,
                linestyle=":" if unseen else "-",
                label=f"{task}{' (unseen)' if unseen else ''}",
            )
            if not pd.isna(chance.get(task)):
                ax.axhline(chance[task], color=colour, linestyle="--", linewidth=0.8, alpha=0.6)
        ax.set_xticks(list(scores.index))
        ax.set_xlabel("after stage (0 = base model)")
        ax.set_ylabel(axis_label(metric))
        if spec_of(metric).bounded:
            ax.set_ylim(0, 100)
        ax.set_title(f"{protocol or ''}: {PROTOCOLS.get(protocol, '')}", fontsize=8)
        ax.legend(fontsize=7, loc="best")
    fig.suptitle(f"{title}\n(dashed: each task's chance level, the majority-class rate)")
    return save(fig, path)


def loss_curves(logs: Mapping[int, pd.DataFrame], title: str, path: Path) -> Path:
    """Training loss per optimiser step, stages one after another; with a method's term in the
    loss (O-LoRA's, EWC's penalty; LwF's, I-LoRA's per-batch term) the task loss and the term
    get separate panels."""
    penalised = any("penalty" in log.columns for log in logs.values())
    fig, axes = new_figure(1, 2 if penalised else 1, width=5.5, height=3.4)
    offset = 0
    for stage, log in sorted(logs.items()):
        steps = log["step"].to_numpy() + offset
        colour = COLORS[(stage - 1) % len(COLORS)]
        task_loss = log["task_loss"] if "task_loss" in log else log["loss"]
        axes[0][0].plot(steps, task_loss, color=colour, label=f"stage {stage}")
        if penalised and "penalty" in log:
            axes[0][1].plot(steps, log["penalty"], color=colour, label=f"stage {stage}")
        offset = int(steps.max()) if len(steps) else offset
    axes[0][0].set_ylabel("task loss (answer-token cross-entropy, nats)")
    if penalised:
        axes[0][1].set_ylabel("the method's term in the loss")
        axes[0][1].legend(fontsize=7)
    for ax in axes[0]:
        ax.set_xlabel("optimiser step (cumulative over stages)")
    axes[0][0].legend(fontsize=7)
    fig.suptitle(title)
    return save(fig, path)


def candidate_losses(
    scores: pd.DataFrame,
    candidates: pd.DataFrame,
    chosen: int,
    criterion_column: str,
    title: str,
    path: Path,
) -> Path:
    """The pre-update loss of every candidate prompt (lower = chosen by SAPO), the chosen one
    marked, each bar labelled with the start of its text."""
    texts = candidates.set_index("candidate_id")["text"]
    table = scores.sort_values(criterion_column).reset_index(drop=True)
    fig, axes = new_figure(1, 1, width=9.0, height=0.45 * len(table) + 1.6)
    ax = axes[0][0]
    colours = ["#d62728" if cid == chosen else "#7f7f7f" for cid in table["candidate_id"]]
    ax.barh(range(len(table)), table[criterion_column], color=colours)
    labels = [
        f"{int(cid)}{' (original)' if cid == 0 else ''}: "
        + textwrap.shorten(str(texts.get(cid, "")), 70, placeholder="…")
        for cid in table["candidate_id"]
    ]
    ax.set_yticks(range(len(table)), labels, fontsize=7)
    ax.invert_yaxis()
    low = float(table[criterion_column].min())
    high = float(table[criterion_column].max())
    ax.set_xlim(low - 0.1 * (high - low + 1e-9), high + 0.1 * (high - low + 1e-9))
    ax.set_xlabel(f"pre-update loss, {criterion_column} (nats; red: chosen)")
    ax.set_title(title, fontsize=9)
    return save(fig, path)


def run_comparison(
    summary: pd.DataFrame, metric: str, path: Path, seeds: pd.DataFrame | None = None
) -> Path:
    """AP, BWT, FWT, F, plasticity, average accuracy and the unseen mean of every configuration
    (sequence/method/strategy; bars), one row of panels per protocol.

    A configuration run with several seeds shows its mean over seeds with the 95% t interval
    and each seed as a dot; one with a single seed shows that run with ±1.96 se. Robustness
    (mean AP over evaluation prompts ± SD) is added where held-out prompts exist."""
    rows_all = summary[summary["metric"] == metric]
    protocols = list(dict.fromkeys(rows_all["protocol"]))
    robust = rows_all["prompts"].max() > 1 if "prompts" in rows_all else False
    columns = list(COMPARED) + (["robust_mean"] if robust else [])
    keys = ["sequence", "method", "strategy"]
    configs = list(dict.fromkeys(map(tuple, rows_all[keys].to_numpy())))
    names = ["/".join(map(str, c[1:])) if len({k[0] for k in configs}) == 1 else "/".join(c)
             for c in configs]  # fmt: skip
    fig, axes = new_figure(
        len(protocols), len(columns), width=max(2.6, 0.32 * len(configs) + 1.2), height=3.9
    )
    for r, protocol in enumerate(protocols):
        rows = rows_all[rows_all["protocol"] == protocol]
        for c, column in enumerate(columns):
            ax = axes[r][c]
            means, low, high, dots = [], [], [], []
            for config in configs:
                runs = rows[(rows[keys] == pd.Series(config, index=keys)).all(axis=1)]
                values = runs[column].to_numpy(float)
                interval = _interval(seeds, config, protocol, metric, column)
                if column == "robust_mean" or len(runs) == 1 or interval is None:
                    spread = (
                        runs["robust_std"].fillna(0).to_numpy()
                        if column == "robust_mean"
                        else Z95 * runs[f"{column}_se"].fillna(0).to_numpy()
                    )
                    mean = float(np.mean(values)) if len(values) else math.nan
                    interval = (mean - float(np.mean(spread)), mean + float(np.mean(spread)))
                else:
                    mean = float(np.nanmean(values))
                means.append(mean)
                low.append(mean - interval[0])
                high.append(interval[1] - mean)
                dots.append(values if len(values) > 1 else [])
            colours = [COLORS[i % len(COLORS)] for i in range(len(configs))]
            x = np.arange(len(configs))
            errors = np.nan_to_num(np.array([low, high]))
            ax.bar(x, means, yerr=errors, color=colours, capsize=3, alpha=0.85)
            for i, values in enumerate(dots):
                ax.plot([i] * len(values), values, "o", color="black", markersize=3)
            ax.axhline(0, color="black", linewidth=0.6)
            ax.set_xticks(x, names, rotation=70, ha="right", fontsize=7)
            ax.set_ylabel(_comparison_label(column, metric), fontsize=8)
            ax.set_title(protocol, fontsize=8)
    fig.suptitle(
        f"Configurations compared on {metric} "
        "(bars: mean over seeds, 95% t interval; dots: seeds; one seed: ±1.96 se)",
        fontsize=9,
    )
    return save(fig, path)


def _comparison_label(column: str, metric: str) -> str:
    if column == "robust_mean":
        return "robustness: AP over prompts\n(error bar: SD across prompts)"
    return f"{column} ({axis_label(metric)})"


def _interval(seeds, config, protocol, metric, column) -> tuple[float, float] | None:
    """The t interval over seeds of a configuration's measure, if it has 2+ seeds."""
    if seeds is None or column not in set(seeds["measure"]):
        return None
    hit = seeds[
        (seeds["sequence"] == config[0])
        & (seeds["method"] == config[1])
        & (seeds["strategy"] == config[2])
        & (seeds["protocol"] == protocol)
        & (seeds["metric"] == metric)
        & (seeds["measure"] == column)
    ]
    if hit.empty or hit["n"].iloc[0] < 2 or pd.isna(hit["ci_low"].iloc[0]):
        return None
    return float(hit["ci_low"].iloc[0]), float(hit["ci_high"].iloc[0])


VERDICT_COLORS = {
    "higher": "#2ca02c",
    "lower": "#d62728",
    "within noise": "#7f7f7f",
    "n/a": "#c7c7c7",
}


def baseline_differences(comparisons: pd.DataFrame, metric: str, path: Path) -> Path:
    """Each configuration minus the baseline, paired (forest plot): the difference with its
    interval, green/red when Holm-corrected significant, grey when within noise, labelled with
    what the test could have detected (so a grey point is not read as "no difference"); one
    panel per measure, one row per protocol."""
    part = comparisons[comparisons["metric"] == metric]
    measures = [m for m in COMPARED if m in set(part["measure"])]
    protocols = list(dict.fromkeys(part["protocol"])) or ["original_prompt"]
    labels = list(dict.fromkeys(part["method"] + "/" + part["strategy"]))
    fig, axes = new_figure(
        len(protocols), max(1, len(measures)), width=2.8, height=0.35 * max(1, len(labels)) + 1.6
    )
    for r, protocol in enumerate(protocols):
        for c, measure in enumerate(measures):
            ax = axes[r][c]
            rows = part[(part["protocol"] == protocol) & (part["measure"] == measure)]
            for _, row in rows.iterrows():
                y = labels.index(f"{row['method']}/{row['strategy']}")
                colour = VERDICT_COLORS.get(row["verdict"], "#7f7f7f")
                if not pd.isna(row["ci_low"]):
                    ax.plot([row["ci_low"], row["ci_high"]], [y, y], color=colour, linewidth=2)
                ax.plot(row["diff"], y, "o", color=colour)
                if row["verdict"] == "within noise" and pd.notna(row.get("mde")):
                    ax.text(
                        0.02, y - 0.22, readable_verdict(row), transform=ax.get_yaxis_transform(),
                        fontsize=5.5, color=colour, ha="left", va="bottom",
                    )  # fmt: skip
            ax.axvline(0, color="black", linewidth=0.8)
            ax.set_yticks(range(len(labels)), labels if c == 0 else [""] * len(labels), fontsize=7)
            ax.set_ylim(len(labels) - 0.5, -0.5)
            ax.set_xlabel(f"{measure} difference ({spec_of(metric).unit})", fontsize=8)
            ax.set_title(protocol, fontsize=8)
    baseline = part["baseline"].iloc[0] if len(part) else "the baseline"
    fig.suptitle(
        f"Against {baseline} on {metric}, paired (95% interval; green/red: Holm-significant, "
        "grey: within noise,\nwith the difference the test detects with 80% power)",
        fontsize=9,
    )
    return save(fig, path)
