"""The per-state score table of a task's candidate prompts: its columns, the criteria SAPO ranks
by and their rank columns.

Torch-free: the scoring job writes this table (:mod:`promptcl.evaluate.scoring`), SAPO reads it
(:mod:`promptcl.strategies.sapo`), and both must agree on what a criterion means without one
importing the other.
"""

from __future__ import annotations

import pandas as pd

SCORE_COLUMNS = [
    "candidate_id",
    "mean_batch_loss",
    "mean_instance_loss",
    "mean_token_loss",
    "tokens",
    "instances",
    "answer_accuracy",
]

#: The score column each SAPO criterion ranks by (see
#: :func:`promptcl.evaluate.scoring.score_candidates`).
#: batch_mean is the reference's Trainer eval loss over consecutive blocks of its per-device
#: evaluation batch; instance_mean weights every instance, token_mean every answer token equally.
CRITERIA = {
    "batch_mean": "mean_batch_loss",
    "instance_mean": "mean_instance_loss",
    "token_mean": "mean_token_loss",
}


def rank_columns(scores: pd.DataFrame) -> pd.DataFrame:
    """``rank_<criterion>`` (1 = lowest loss, ties to the lower id) for every criterion."""
    out = scores.copy()
    for criterion, column in CRITERIA.items():
        order = out.sort_values([column, "candidate_id"], kind="stable").index
        out.loc[order, f"rank_{criterion}"] = range(1, len(out) + 1)
        out[f"rank_{criterion}"] = out[f"rank_{criterion}"].astype(int)
    return out
