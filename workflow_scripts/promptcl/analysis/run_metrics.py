"""One run's results from its evaluations: the accuracy matrix R under both protocols, the
run summary (continual metrics, unseen mean, robustness, timings), the instance scores the
paired comparisons resample, and the text a researcher reads (rule ``aggregate_run``)."""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import pandas as pd

from promptcl.analysis.aggregate import (
    PROTOCOLS,
    cell_table,
    combine_outcomes,
    robustness,
    run_summary,
    split_prompts,
    trained_prompt_tables,
)
from promptcl.analysis.compare import instance_scores
from promptcl.analysis.summary_text import format_matrix, format_summary
from promptcl.store import paths

Tables = dict[tuple[int, str], pd.DataFrame]


@dataclass
class RunMetrics:
    cells: pd.DataFrame
    summary: pd.DataFrame
    instances: pd.DataFrame
    text: str


def read_evaluations(layout: dict, zero_shot: Sequence[str], stages: Sequence[str]) -> Tables:
    """(stage, task) -> table of one evaluation: stage 0 one file per task, then each trained
    stage's folder of <task>.parquet."""
    tasks = layout["sequence"] + layout["unseen"]
    tables = {(0, t): pd.read_parquet(p) for t, p in zip(tasks, zero_shot, strict=True)}
    for k, folder in zip(layout["stages"], stages, strict=True):
        for task in tasks:
            tables[(k, task)] = pd.read_parquet(Path(folder) / f"{task}.parquet")
    return tables


def read_stage_records(adapters: Sequence[str]) -> list[dict]:
    return [json.loads((Path(a) / paths.STAGE_RECORD).read_text()) for a in adapters]


def trained_candidates(records: Sequence[dict]) -> dict[str, int]:
    """Task -> the candidate id its stage trained (and evaluates the trained protocol) with."""
    out = {}
    for info in records:
        prompts = info.get("evaluation_prompts") or {info["task"]: info["evaluation_prompt"]}
        out.update({task: p["candidate_id"] for task, p in prompts.items()})
    return out


def aggregate_run(
    run: str,
    layout: dict,
    generation: Tables | None,
    likelihood: Tables | None,
    records: Sequence[dict],
) -> RunMetrics:
    """R, summary, instance scores and text of ``run`` (``layout`` as the plan's)."""
    sequence, unseen, metrics = layout["sequence"], layout["unseen"], layout.get("metrics")
    tables = combine_outcomes(generation, likelihood)
    trained = trained_candidates(records)
    # R under each protocol: the original prompt everywhere, and the prompt each seen task was
    # trained with (the SAPO paper's); held-out prompts give robustness
    protocol_tables = {
        "original_prompt": split_prompts(tables)["original"],
        "trained_prompt": trained_prompt_tables(tables, sequence, trained),
    }
    cells, summaries = [], []
    for protocol, chosen in protocol_tables.items():
        part = cell_table(chosen, sequence, unseen, layout["stages"], metrics)
        summaries.append(run_summary(part, sequence, unseen).assign(protocol=protocol))
        cells.append(part.assign(protocol=protocol))
    cells = pd.concat(cells, ignore_index=True)
    robust = robustness(tables, sequence, unseen, metrics)
    summary = pd.concat(summaries, ignore_index=True).merge(robust, on="metric", how="left")
    summary["train_seconds"] = round(sum(i["train_seconds"] for i in records), 3)
    summary["scoring_seconds"] = round(sum(i.get("scoring_seconds", 0.0) for i in records), 3)
    summary["prompts_trained"] = json.dumps(
        [i["prompt"].get("candidate_id", i["prompt"].get("candidate_ids")) for i in records]
    )
    identity = [
        ("sequence", layout["name"]),
        ("method", layout["method"]),
        ("strategy", layout["strategy"]),
        ("seed", layout["seed"]),
    ]
    for key, value in reversed(identity):
        summary.insert(0, key, value)
    cells.insert(0, "protocol", cells.pop("protocol"))
    summary.insert(0, "protocol", summary.pop("protocol"))
    cells.insert(0, "run", run)
    summary.insert(0, "run", run)
    text = run_text(run, summary, cells, robust, trained, metrics)
    return RunMetrics(cells, summary, instance_scores(protocol_tables, metrics), text)


def run_text(
    run: str,
    summary: pd.DataFrame,
    cells: pd.DataFrame,
    robust: pd.DataFrame,
    trained: dict[str, int],
    metrics: Sequence[str],
) -> str:
    text = [format_summary(summary, run)]
    text.append(f"training prompts per stage (candidate ids): {summary['prompts_trained'][0]}")
    text.append(f"evaluated with (trained_prompt protocol): {json.dumps(trained)}")
    if robust["prompts"].max() > 1:
        for _, row in robust.iterrows():
            text.append(
                f"robustness ({row['metric']}): AP over {row['prompts']} prompts "
                f"{row['robust_mean']:.2f} ± SD {row['robust_std']:.2f}"
            )
    text.append("")
    for protocol in PROTOCOLS:
        part = cells[cells["protocol"] == protocol]
        if protocol == "trained_prompt" and not any(trained.values()):
            text.append("trained_prompt: R equals original_prompt (trained with the original)\n")
            continue
        for metric in metrics:
            text.append(f"{protocol}: " + format_matrix(part, metric))
    return "\n".join(text)
