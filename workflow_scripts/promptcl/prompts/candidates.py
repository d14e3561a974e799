"""The candidate-prompt table (``results/prompts/<task>/candidates.parquet``): one home for its
columns, what a valid candidate is, which ones are held out for evaluation and which ones a
prompt strategy may train with.

Candidate 0 is always the task's original instruction. Rows are made by
:mod:`promptcl.prompts.paraphrase` (from a file pool, a local model or an API) and read by the
strategies,
the scoring and the evaluation, all through the functions here.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence

import pandas as pd

COLUMNS = [
    "candidate_id",
    "text",
    "source",
    "model",
    "request_index",
    "valid",
    "reject_reason",
    "heldout",
]
ORIGINAL_ID = 0


class CandidateError(RuntimeError):
    """Too few valid candidates survived validation, or an unknown candidate was asked for."""


def make_table(
    original: str,
    texts: Sequence[str | None],
    reasons: Sequence[str | None],
    source: str,
    model: str,
) -> pd.DataFrame:
    """The original (candidate 0), then one row per text in order; ``reasons[i]`` is None for a
    valid text, else why it was rejected."""
    rows = [(ORIGINAL_ID, original, "original", "", -1, True, "", False)]
    for cid, (text, reason) in enumerate(zip(texts, reasons, strict=True), 1):
        rows.append((cid, text or "", source, model, cid - 1, reason is None, reason or "", False))
    return pd.DataFrame(rows, columns=COLUMNS)


def hold_out(table: pd.DataFrame, n: int) -> pd.DataFrame:
    """Reserve the last ``n`` valid paraphrases for evaluation: no strategy may train on them."""
    table = table.copy()
    table["heldout"] = False
    if n:
        ids = table.loc[table["valid"] & (table["candidate_id"] > 0), "candidate_id"].tail(n)
        table.loc[table["candidate_id"].isin(ids), "heldout"] = True
    return table


def training_pool(table: pd.DataFrame) -> pd.DataFrame:
    """The candidates a strategy may consider: every one but the held-out (rejected ones stay,
    with their reasons, for the record; :func:`training_ids` are the ones it may train with)."""
    if "heldout" not in table.columns:  # a table from before held-out prompts lacks the flag
        return table.reset_index(drop=True)
    return table[~table["heldout"].eq(True)].reset_index(drop=True)


def training_ids(table: pd.DataFrame) -> list[int]:
    """Ids of the valid, not held-out candidates, ascending: what strategies train with."""
    pool = training_pool(table)
    return sorted(int(i) for i in pool.loc[pool["valid"].eq(True), "candidate_id"])


def training_texts(table: pd.DataFrame) -> list[tuple[int, str]]:
    """(candidate_id, text) of :func:`training_ids`: what SAPO scores."""
    return [(cid, text_of(table, cid)) for cid in training_ids(table)]


def text_of(table: pd.DataFrame, candidate_id: int) -> str:
    row = table[table["candidate_id"].astype(int) == int(candidate_id)]
    if row.empty:
        raise CandidateError(f"no candidate {candidate_id} (ids: {list(table['candidate_id'])})")
    return str(row["text"].iloc[0])


def heldout_prompts(table: pd.DataFrame) -> list[tuple[str, int, str]]:
    """(prompt_id, candidate_id, text) of the held-out paraphrases, numbered heldout_1..n."""
    if "heldout" not in table.columns:
        return []
    rows = table[table["heldout"].eq(True)]
    return [
        (f"heldout_{i}", int(cid), text)
        for i, (cid, text) in enumerate(zip(rows["candidate_id"], rows["text"], strict=True), 1)
    ]


def require_valid(table: pd.DataFrame, min_valid: int, task: str) -> None:
    """Fail, naming the task and the reject reasons, when too few paraphrases survive."""
    valid = len(training_ids(table)) - 1  # the original does not count
    if valid >= min_valid:
        return
    reasons = Counter(table.loc[~table["valid"], "reject_reason"])
    summary = "; ".join(f"{reason} ×{n}" for reason, n in reasons.most_common())
    raise CandidateError(
        f"task {task}: only {valid} valid paraphrase(s) of {len(table) - 1}, fewer than "
        f"prompts.min_valid={min_valid}. Rejected: {summary or 'none'}"
    )
