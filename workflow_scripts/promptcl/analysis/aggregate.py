"""Build a run's accuracy matrix and summary from per-(stage, task) prediction tables.

Every cell carries its standard error and n so that summaries can say which differences are
within noise; the continual metrics themselves live in :mod:`promptcl.analysis.metrics`.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

import numpy as np
import pandas as pd

from promptcl.analysis.metrics import (
    CONTINUAL_METRICS,
    REGISTRY,
    as_str_list,
    continual_metrics,
    majority_rate,
    mean_stderr,
)
from promptcl.analysis.metrics import (
    metric as spec_of,
)

CELL_COLUMNS = ("stage", "task", "role", "metric", "score", "stderr", "n", "majority_rate")
#: How R is measured. original_prompt: every task with its original instruction, whatever the
#: run trained with. trained_prompt (the SAPO paper's protocol): each sequence task, once trained,
#: with the prompt the run trained it with; tasks not yet trained and unseen tasks with the
#: original. The two differ only for runs that trained with another prompt (sapo, fixed:<id>).
PROTOCOLS = {
    "original_prompt": "every task with its original prompt",
    "trained_prompt": "seen tasks with the prompt they were trained with (the SAPO paper)",
}
TRAINED_PROMPT_ID = "trained"
#: The likelihood evaluation's own columns, joined to the generation rows of the same item.
LIKELIHOOD_ONLY = (
    "gold_logprob",
    "gold_logprob_sum",
    "gold_tokens",
    "rank_prediction",
    "rank_accuracy",
    "answers_scored",
)


def _check_tasks(sequence: Sequence[str], unseen: Sequence[str]) -> tuple[list[str], list[str]]:
    seq, uns = list(sequence), list(unseen)
    if not seq:
        raise ValueError("the task sequence is empty")
    for name, tasks in (("sequence", seq), ("unseen", uns)):
        dupes = sorted({t for t in tasks if tasks.count(t) > 1})
        if dupes:
            raise ValueError(f"duplicate tasks in {name}: {dupes}")
    overlap = sorted(set(seq) & set(uns))
    if overlap:
        raise ValueError(f"tasks both in the sequence and unseen: {overlap}")
    return seq, uns


def _is_generation(df: pd.DataFrame) -> bool:
    """A task with no labels on any instance is scored by generation metrics only."""
    return all(not as_str_list(lbls) for lbls in df["labels"])


def present_metrics(predictions: Mapping[tuple[int, str], pd.DataFrame]) -> list[str]:
    """The registered metrics every table has a column for, in registry order."""
    tables = list(predictions.values())
    return [m for m in REGISTRY if tables and all(m in t.columns for t in tables)]


def combine_outcomes(
    generation: Mapping[tuple[int, str], pd.DataFrame] | None,
    likelihood: Mapping[tuple[int, str], pd.DataFrame] | None,
) -> dict[tuple[int, str], pd.DataFrame]:
    """One table per (stage, task): the generation rows with the likelihood columns of the
    same (prompt, item) joined, or either alone. Both evaluations must have measured exactly the
    same (prompt, item) rows: a mismatch is an error, never a silent NaN."""
    if not generation or not likelihood:
        return dict(generation or likelihood or {})
    if set(generation) != set(likelihood):
        raise ValueError(
            "the generation and likelihood evaluations cover different (stage, task) cells: "
            f"{sorted(set(generation) ^ set(likelihood))}"
        )
    out = {}
    keys = ["prompt_id", "id"]
    for key, gen in generation.items():
        lik = likelihood[key][[*keys, *LIKELIHOOD_ONLY]]
        merged = gen.merge(lik, on=keys, how="outer", validate="one_to_one", indicator=True)
        if (merged["_merge"] != "both").any():
            raise ValueError(
                f"(stage, task) {key}: the generation and likelihood evaluations measured "
                "different (prompt, item) rows"
            )
        out[key] = merged.drop(columns="_merge")
    return out


def cell_table(
    predictions: Mapping[tuple[int, str], pd.DataFrame],
    sequence: Sequence[str],
    unseen: Sequence[str],
    stages: Sequence[int] | None = None,
    metrics: Sequence[str] | None = None,
) -> pd.DataFrame:
    """Long table of (stage, task, metric) scores with stderr, n and majority-class rate.

    Requires a table for stage 0 and every evaluated stage (``stages``, default 1..T) of every
    sequence and unseen task, because a silently missing cell would bias the continual metrics.
    ``metrics`` defaults to every registered metric the tables have.
    """
    seq, uns = _check_tasks(sequence, unseen)
    rows_of_r = _rows(len(seq), stages)
    tasks = [(t, "sequence") for t in seq] + [(t, "unseen") for t in uns]
    missing = [(s, t) for s in rows_of_r for t, _ in tasks if (s, t) not in predictions]
    if missing:
        raise ValueError(f"missing prediction tables for (stage, task): {missing}")
    metrics = present_metrics(predictions) if metrics is None else list(metrics)
    required = ("id", "references", "labels", *metrics)
    rows: list[dict[str, object]] = []
    for stage in rows_of_r:
        for task, role in tasks:
            df = predictions[(stage, task)]
            absent = [c for c in required if c not in df.columns]
            if absent:
                raise ValueError(f"prediction table ({stage}, {task!r}) lacks columns {absent}")
            generation = _is_generation(df)
            labels = as_str_list(df["labels"].iloc[0]) if len(df) else []
            majority = math.nan if generation else majority_rate(list(df["references"]), labels)
            for name in metrics:
                spec = spec_of(name)
                if spec.labels_only and generation:
                    score, se, n = math.nan, math.nan, 0
                else:
                    score, se, n = mean_stderr(df[name].to_numpy(dtype=float), spec.binary)
                rows.append(
                    {
                        "stage": stage,
                        "task": task,
                        "role": role,
                        "metric": name,
                        "score": score,
                        "stderr": se,
                        "n": n,
                        "majority_rate": majority if spec.chance else math.nan,
                    }
                )
    out = pd.DataFrame(rows, columns=list(CELL_COLUMNS))
    return out.astype(
        {
            "stage": "int64",
            "n": "int64",
            "score": "float64",
            "stderr": "float64",
            "majority_rate": "float64",
        }
    )


def _rows(T: int, stages: Sequence[int] | None) -> list[int]:
    """Row 0 and the evaluated stages: all of 1..T unless a method trains fewer (multitask)."""
    stages = list(range(1, T + 1)) if stages is None else sorted(int(s) for s in stages)
    bad = [s for s in stages if not 1 <= s <= T]
    if bad:
        raise ValueError(f"stages {bad} are outside 1..{T}")
    return [0, *stages]


def _indexed(cells: pd.DataFrame) -> pd.DataFrame:
    absent = [c for c in ("stage", "task", "metric", "score", "stderr") if c not in cells.columns]
    if absent:
        raise ValueError(f"cell table lacks columns {absent}")
    indexed = cells.set_index(["stage", "task", "metric"])
    if not indexed.index.is_unique:
        dupes = indexed.index[indexed.index.duplicated()].unique().tolist()
        raise ValueError(f"duplicate (stage, task, metric) cells: {dupes}")
    return indexed


def _cell(indexed: pd.DataFrame, stage: int, task: str, metric: str, col: str) -> float:
    key = (stage, task, metric)
    if key not in indexed.index:
        raise ValueError(f"cell table has no row for (stage, task, metric) = {key}")
    return float(indexed.at[key, col])


def run_summary(
    cells: pd.DataFrame, sequence: Sequence[str], unseen: Sequence[str]
) -> pd.DataFrame:
    """One row per metric with continual metrics (value and se) and unseen-task means.

    Rows of R a run does not evaluate (a ``multitask`` run has only rows 0 and T) are NaN, and
    so is every metric that needs them.

    unseen_mean averages unseen tasks at the final stage T (se assumes independent tasks);
    a NaN task score (e.g. label accuracy of a generation task) makes the mean NaN rather
    than silently averaging over a different subset of tasks.
    """
    seq, uns = _check_tasks(sequence, unseen)
    T = len(seq)
    indexed = _indexed(cells)
    evaluated = set(int(s) for s in cells["stage"])

    def _lookup(_indexed, i, t, metric, col):  # rows a method does not define are NaN
        return _cell(_indexed, i, t, metric, col) if i in evaluated else math.nan

    present = list(dict.fromkeys(cells["metric"]))
    metrics = [m for m in REGISTRY if m in present] + [m for m in present if m not in REGISTRY]
    rows: list[dict[str, object]] = []
    for metric in metrics:
        R = np.array([[_lookup(indexed, i, t, metric, "score") for t in seq] for i in range(T + 1)])
        SE = np.array(
            [[_lookup(indexed, i, t, metric, "stderr") for t in seq] for i in range(T + 1)]
        )
        row: dict[str, object] = {"metric": metric, "T": T}
        for name, (value, se) in continual_metrics(R, SE).items():
            row[name] = value
            row[f"{name}_se"] = se
        stage_means: list[float] = []
        for i in range(T + 1):
            scores = [_lookup(indexed, i, t, metric, "score") for t in uns]
            stage_means.append(float(np.mean(scores)) if uns else math.nan)
        if uns:
            ses = np.array([_lookup(indexed, T, t, metric, "stderr") for t in uns])
            row["unseen_mean"] = stage_means[T]
            row["unseen_mean_se"] = float(math.sqrt(np.sum(ses**2)) / len(uns))
        else:
            row["unseen_mean"] = math.nan
            row["unseen_mean_se"] = math.nan
        for i, mean in enumerate(stage_means):
            row[f"unseen_mean_stage_{i}"] = mean
        rows.append(row)
    columns = ["metric", "T"]
    for name in CONTINUAL_METRICS:
        columns += [name, f"{name}_se"]
    columns += ["unseen_mean", "unseen_mean_se"] + [f"unseen_mean_stage_{i}" for i in range(T + 1)]
    return pd.DataFrame(rows, columns=columns).astype({"T": "int64"})


def matrix(cells: pd.DataFrame, metric: str, value: str = "score") -> pd.DataFrame:
    """Wide stage x task view (sequence tasks in order, then unseen) to read a run at a glance."""
    for col in ("stage", "task", "metric", value):
        if col not in cells.columns:
            raise ValueError(f"cell table lacks column {col!r}")
    sub = cells[cells["metric"] == metric]
    if sub.empty:
        raise ValueError(f"no cells for metric {metric!r}")
    if "role" in sub.columns:
        order = list(dict.fromkeys(sub.loc[sub["role"] == "sequence", "task"]))
        order += [
            t for t in dict.fromkeys(sub.loc[sub["role"] != "sequence", "task"]) if t not in order
        ]
    else:
        order = list(dict.fromkeys(sub["task"]))
    wide = sub.pivot(index="stage", columns="task", values=value)
    wide = wide.reindex(columns=order).sort_index()
    wide.columns.name = "task"
    return wide


def trained_prompt_tables(
    predictions: Mapping[tuple[int, str], pd.DataFrame],
    sequence: Sequence[str],
    trained: Mapping[str, int],
) -> dict[tuple[int, str], pd.DataFrame]:
    """The prediction tables of R under the trained-prompt protocol.

    ``trained`` maps each sequence task to the candidate id its stage trained with (0 = the
    original). Cells (i, j) with i ≥ stage of j use the rows evaluated with that prompt
    (``prompt_id == "trained"``); all other cells are the original-prompt ones. A missing
    evaluation is an error, never silently replaced by the original.
    """
    by_prompt = split_prompts(predictions)
    out = dict(by_prompt["original"])
    with_trained = by_prompt.get(TRAINED_PROMPT_ID, {})
    for k, task in enumerate(sequence, start=1):
        if int(trained.get(task, 0)) == 0:
            continue
        for stage, name in list(out):
            if name != task or stage < k:
                continue
            if (stage, task) not in with_trained:
                raise ValueError(
                    f"no predictions with the trained prompt (candidate {trained[task]}) for "
                    f"task {task} after stage {stage}"
                )
            out[(stage, task)] = with_trained[(stage, task)]
    return out


def split_prompts(
    predictions: Mapping[tuple[int, str], pd.DataFrame],
) -> dict[str, dict[tuple[int, str], pd.DataFrame]]:
    """Prediction tables per evaluation prompt id ("original", "heldout_1", ...)."""
    out: dict[str, dict[tuple[int, str], pd.DataFrame]] = {}
    for key, table in predictions.items():
        ids = table["prompt_id"] if "prompt_id" in table.columns else pd.Series(["original"])
        for pid in dict.fromkeys(ids):
            part = table if "prompt_id" not in table.columns else table[table["prompt_id"] == pid]
            out.setdefault(str(pid), {})[key] = part.reset_index(drop=True)
    return out


def robustness(
    predictions: Mapping[tuple[int, str], pd.DataFrame],
    sequence: Sequence[str],
    unseen: Sequence[str],
    metrics: Sequence[str] | None = None,
) -> pd.DataFrame:
    """AP of the final state under each evaluation prompt (the original and the held-out
    paraphrases; not the run's own trained prompts), then its mean and SD across prompts.

    One row per metric: ``prompts`` (how many), ``robust_mean``, ``robust_std`` (sample SD; NaN
    with a single prompt) and ``AP_<prompt_id>`` for each prompt.
    """
    T = len(sequence)
    metrics = present_metrics(predictions) if metrics is None else list(metrics)
    per_prompt = {}
    for pid, tables in split_prompts(predictions).items():
        if pid == TRAINED_PROMPT_ID:
            continue
        final = {k: v for k, v in tables.items() if k[0] == T and k[1] in sequence}
        if len(final) != T:
            continue  # a prompt evaluated on only some tasks cannot give an AP
        per_prompt[pid] = {
            metric: float(np.mean([_mean(final[(T, t)], metric) for t in sequence]))
            for metric in metrics
        }
    rows = []
    for metric in metrics:
        values = {pid: v[metric] for pid, v in per_prompt.items()}
        arr = np.array(list(values.values()), dtype=float)
        rows.append(
            {
                "metric": metric,
                "prompts": len(arr),
                "robust_mean": float(np.mean(arr)) if len(arr) else math.nan,
                "robust_std": float(np.std(arr, ddof=1)) if len(arr) > 1 else math.nan,
                **{f"AP_{pid}": v for pid, v in values.items()},
            }
        )
    return pd.DataFrame(rows)


def _mean(table: pd.DataFrame, metric: str) -> float:
    values = table[metric].astype(float)
    return float(values.mean()) if values.notna().any() else math.nan
