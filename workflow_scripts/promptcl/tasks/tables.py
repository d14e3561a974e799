"""A task's tables as the workflow uses them: every split read, capped reproducibly, with the
metadata a user auditing the data wants (``results/tasks/<task>/``)."""

from __future__ import annotations

from typing import Any

import numpy as np
import pandas as pd

from promptcl.analysis.metrics import majority_rate
from promptcl.tasks.files import (
    REQUIRED_SPLITS,
    SPLITS,
    TABLE_COLUMNS,
    TaskFiles,
    TaskFormatError,
    read_split,
)

CAP_MODES = ("first", "sample")


def apply_cap(df: pd.DataFrame, n: int | None, mode: str = "first", seed: int = 0) -> pd.DataFrame:
    """Limit a table to ``n`` rows, reproducibly (``first`` rows, or a seeded ``sample``).

    Sampled rows keep their original relative order so a capped table reads like its source.
    """
    if mode not in CAP_MODES:
        raise ValueError(f"cap mode must be one of {CAP_MODES}, got {mode!r}")
    if n is None:
        return df
    if isinstance(n, bool) or not isinstance(n, (int, np.integer)) or n < 0:
        raise ValueError(f"cap must be a non-negative integer or None, got {n!r}")
    if n >= len(df):
        return df
    if mode == "first":
        return df.head(int(n)).reset_index(drop=True)
    rng = np.random.default_rng(seed)
    positions = np.sort(rng.choice(len(df), size=int(n), replace=False))
    return df.iloc[positions].reset_index(drop=True)


def build_task_tables(
    files: TaskFiles, caps: dict[str, dict], seed: int = 0
) -> tuple[dict[str, pd.DataFrame], dict[str, Any]]:
    """All splits of a task, capped, plus metadata a user auditing the data wants to see.

    A missing ``dev`` split yields an empty table (some raw tasks ship only train/test). An
    empty train or test split (no records, or none left by its cap) is refused here, naming the
    file or the cap: nothing could be trained, scored or evaluated on it.
    """
    tables: dict[str, pd.DataFrame] = {}
    meta: dict[str, Any] = {
        "task_id": files.task_id,
        "full_name": files.full_name,
        "format": files.format,
        "instructions_file": None if files.instructions is None else str(files.instructions),
        "splits": {},
    }
    for split in SPLITS:
        if split not in files.splits and split == "dev":
            table = pd.DataFrame({c: [] for c in TABLE_COLUMNS}).astype(object)
            source_rows = 0
        else:
            table = read_split(files, split)
            source_rows = len(table)
        cap = caps.get(split) or {}
        table = apply_cap(table, cap.get("n"), cap.get("mode", "first"), seed)
        if table.empty and split in REQUIRED_SPLITS:
            raise TaskFormatError(
                f"{files.splits[split]}: split {split!r} of task {files.full_name} has no records"
                if not source_rows
                else f"data.caps.{split}.n: {cap.get('n')} leaves split {split!r} of task "
                f"{files.full_name} empty"
            )
        tables[split] = table
        meta["splits"][split] = {
            "file": str(files.splits[split]) if split in files.splits else None,
            "source_rows": source_rows,
            "rows": len(table),
            "majority_rate": None
            if table.empty or not len(table["labels"].iloc[0])
            else majority_rate(list(table["references"]), list(table["labels"].iloc[0])),
        }
    first = next((t for t in tables.values() if not t.empty), None)
    if first is not None:
        meta["instruction"] = first["instruction"].iloc[0]
        meta["suffix"] = first["suffix"].iloc[0]
        meta["labels"] = list(first["labels"].iloc[0])
    return tables, meta


def prompt_parts(meta: dict, where: str) -> tuple[str, list[str]]:
    """(original instruction, labels) of a prepared task (its ``task.json``), for the jobs that
    paraphrase it; a table without them cannot come from :func:`build_task_tables`."""
    if not isinstance(meta.get("instruction"), str) or not isinstance(meta.get("labels"), list):
        raise TaskFormatError(
            f"{where}: no instruction or labels recorded (its task has no records?); redo it "
            "with: snakemake --cores all --forcerun prepare_tasks"
        )
    return meta["instruction"], list(meta["labels"])
