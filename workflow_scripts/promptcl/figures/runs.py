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

from ..aggregate import PROTOCOLS, matrix
from .style import COLORS, new_figure, save

#: The summary's columns compared across runs, with the standard-error column of each.
COMPARED = ("AP", "BWT", "FWT", "F", "unseen_mean")
Z95 = 1.959964


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
            image = ax.imshow(scores.to_numpy(float), vmin=0, vmax=100, cmap="viridis")
            for (i, j), value in np.ndenumerate(scores.to_numpy(float)):
                if not math.isnan(value):
                    colour = "white" if value < 55 else "black"
                    ax.text(j, i, f"{value:.0f}", ha="center", va="center", color=colour)
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
            fig.colorbar(image, ax=ax, label=f"{metric} (0-100)", shrink=0.8)
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
        ax.set_ylabel(f"{metric} (0-100)")
        ax.set_ylim(0, 100)
        ax.set_title(f"{protocol or ''}: {PROTOCOLS.get(protocol, '')}", fontsize=8)
        ax.legend(fontsize=7, loc="best")
    fig.suptitle(f"{title}\n(dashed: each task's chance level, the majority-class rate)")
    return save(fig, path)


def loss_curves(logs: Mapping[int, pd.DataFrame], title: str, path: Path) -> Path:
    """Training loss per optimiser step, stages one after another; with a weight penalty
    (O-LoRA) the task loss and the penalty get separate panels."""
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
        axes[0][1].set_ylabel("weight penalty (O-LoRA, in the loss)")
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


def run_comparison(summary: pd.DataFrame, metric: str, path: Path) -> Path:
    """AP, BWT, FWT, F and the unseen mean of every run (bars) with 95% intervals (±1.96 se),
    plus robustness (mean AP over evaluation prompts ± SD) where held-out prompts exist; one
    row of panels per protocol."""
    rows_all = summary[summary["metric"] == metric]
    protocols = list(dict.fromkeys(rows_all["protocol"]))
    robust = rows_all["prompts"].max() > 1 if "prompts" in rows_all else False
    columns = list(COMPARED) + (["robust_mean"] if robust else [])
    fig, axes = new_figure(len(protocols), len(columns), width=2.6, height=3.8)
    for r, protocol in enumerate(protocols):
        rows = rows_all[rows_all["protocol"] == protocol].reset_index(drop=True)
        for c, column in enumerate(columns):
            ax = axes[r][c]
            if column == "robust_mean":
                errors = rows["robust_std"].fillna(0).to_numpy()
                label = "robustness: AP over prompts\n(error bar: SD across prompts)"
            else:
                errors = Z95 * rows[f"{column}_se"].fillna(0).to_numpy()
                label = f"{column} ({metric}, 0-100)\n(error bar: 95% interval)"
            colours = [COLORS[i % len(COLORS)] for i in range(len(rows))]
            ax.bar(range(len(rows)), rows[column], yerr=errors, color=colours, capsize=3)
            ax.axhline(0, color="black", linewidth=0.6)
            ax.set_xticks(range(len(rows)), rows["run"], rotation=70, ha="right", fontsize=7)
            ax.set_ylabel(label, fontsize=8)
            ax.set_title(protocol, fontsize=8)
    fig.suptitle(f"Runs compared on {metric}")
    return save(fig, path)
