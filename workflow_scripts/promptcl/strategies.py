"""Prompt strategies: which candidate instruction each training example of a stage uses."""

from __future__ import annotations

import pandas as pd

STRATEGIES = ("original",)


def training_instruction(candidates: pd.DataFrame, strategy: str) -> tuple[int, str]:
    """(candidate_id, text) of the single instruction a static strategy trains with."""
    valid = candidates[candidates["valid"]]
    if strategy == "original":
        row = valid[valid["candidate_id"] == 0]
    else:
        raise ValueError(f"runs.prompt_strategies: unknown strategy '{strategy}'")
    if row.empty:
        raise ValueError(f"strategy {strategy}: no valid candidate to train with")
    return int(row["candidate_id"].iloc[0]), str(row["text"].iloc[0])
