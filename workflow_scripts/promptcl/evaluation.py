"""What every evaluation of a model state evaluates: each task with its original prompt, the
held-out paraphrases no run trains on, and, for a task the run trained with another prompt,
that prompt too (``prompt_id`` "trained", the SAPO paper's protocol). Shared by the generation
(:mod:`promptcl.inference`) and likelihood (:mod:`promptcl.likelihood`) evaluations, so both
measure the same (task, prompt, item) rows."""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path

import pandas as pd

from . import paths
from .aggregate import TRAINED_PROMPT_ID
from .candidates import heldout_prompts


def trained_prompts(adapters: Sequence[str]) -> dict[str, str]:
    """Task -> instruction, for the tasks of these stages that trained with a non-original
    prompt (from each adapter's stage record)."""
    out = {}
    for adapter in adapters:
        info = json.loads((Path(adapter) / paths.STAGE_RECORD).read_text())
        # every task the stage trained with the run's strategy (several for multitask)
        prompts = info.get("evaluation_prompts") or {info["task"]: info["evaluation_prompt"]}
        for task, prompt in prompts.items():
            if int(prompt["candidate_id"]) != 0:
                out[task] = prompt["instruction"]
    return out


def evaluation_prompts(
    task: str, pool: pd.DataFrame | None, trained: dict[str, str]
) -> list[tuple[str, str | None]]:
    """(prompt_id, instruction) pairs of one task; None is the task's own instruction."""
    prompts: list[tuple[str, str | None]] = [("original", None)]
    if pool is not None:
        prompts += [(pid, text) for pid, _, text in heldout_prompts(pool)]
    if task in trained:
        prompts.append((TRAINED_PROMPT_ID, trained[task]))
    return prompts


def evaluate_tasks(
    tasks: Sequence[str],
    tables: Sequence[str],
    pools: Sequence[str | None],
    trained: dict[str, str],
    evaluate: Callable[[str, pd.DataFrame, str, str | None], pd.DataFrame],
) -> Iterator[tuple[str, pd.DataFrame]]:
    """(task, its rows under every evaluation prompt) per task; ``evaluate(task, table,
    prompt_id, instruction)`` measures one task under one prompt."""
    pools = list(pools) or [None] * len(tables)
    for task, table_path, pool in zip(tasks, tables, pools, strict=True):
        table = pd.read_parquet(table_path)
        pool_table = None if pool is None else pd.read_parquet(pool)
        parts = [
            evaluate(task, table, pid, text)
            for pid, text in evaluation_prompts(task, pool_table, trained)
        ]
        yield task, pd.concat(parts, ignore_index=True)


def log_scores(log, task: str, table: pd.DataFrame, metrics: Sequence[str]) -> None:
    """One log line per evaluation prompt: the task's mean of each metric."""
    for pid, part in table.groupby("prompt_id", sort=False):
        means = " ".join(f"{m}={part[m].mean():.3g}" for m in metrics)
        log.info("%s [%s]: n=%d %s", task, pid, len(part), means)
