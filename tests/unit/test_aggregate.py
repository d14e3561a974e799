"""Tests for building cell tables, run summaries and their text rendering."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest

from promptcl.analysis.aggregate import cell_table, matrix, run_summary
from promptcl.analysis.metrics import score_predictions
from promptcl.analysis.summary_text import format_matrix, format_summary

SEQUENCE = ["cls_a", "gen_b"]
UNSEEN = ["cls_u"]

# Per-instance exact-match outcomes (4 instances) for each (stage, task).
EM = {
    (0, "cls_a"): [0, 0, 100, 0],  # 25
    (1, "cls_a"): [100, 100, 100, 0],  # 75
    (2, "cls_a"): [100, 100, 0, 0],  # 50
    (0, "gen_b"): [0, 0, 0, 0],  # 0
    (1, "gen_b"): [0, 100, 0, 0],  # 25
    (2, "gen_b"): [100, 100, 100, 0],  # 75
    (0, "cls_u"): [100, 0, 0, 0],  # 25
    (1, "cls_u"): [100, 100, 0, 0],  # 50
    (2, "cls_u"): [100, 100, 100, 100],  # 100
}
ROUGE = [10.0, 20.0, 30.0, 40.0]  # same for every table: mean 25, se sqrt(500/3)/2


def _table(stage: int, task: str) -> pd.DataFrame:
    em = [float(x) for x in EM[(stage, task)]]
    generation = task.startswith("gen")
    labels = [] if generation else ["yes", "no"]
    # First references: "yes" x3, "no" x1 -> majority rate 75 for classification tasks.
    refs = [["yes"], ["Yes."], ["no"], ["yes", "no"]] if not generation else [["a b"]] * 4
    return pd.DataFrame(
        {
            "id": [f"{task}-{k}" for k in range(4)],
            "prediction": ["x"] * 4,
            "references": refs,
            "labels": [labels] * 4,
            "rougeL": ROUGE,
            "exact_match": em,
            "label_accuracy": [math.nan] * 4 if generation else em,
        }
    )


@pytest.fixture
def predictions() -> dict[tuple[int, str], pd.DataFrame]:
    return {key: _table(*key) for key in EM}


@pytest.fixture
def cells(predictions: dict[tuple[int, str], pd.DataFrame]) -> pd.DataFrame:
    return cell_table(predictions, SEQUENCE, UNSEEN)


def _se(p: float, n: int = 4) -> float:
    return math.sqrt(p * (1 - p) / n) * 100


def test_cell_table_shape_and_types(cells: pd.DataFrame) -> None:
    assert list(cells.columns) == [
        "stage",
        "task",
        "role",
        "metric",
        "score",
        "stderr",
        "n",
        "majority_rate",
    ]
    assert len(cells) == 3 * 3 * 3  # stages x tasks x metrics
    assert cells["stage"].dtype == np.int64 and cells["n"].dtype == np.int64
    roles = cells.drop_duplicates("task").set_index("task")["role"].to_dict()
    assert roles == {"cls_a": "sequence", "gen_b": "sequence", "cls_u": "unseen"}


def test_cell_table_values(cells: pd.DataFrame) -> None:
    idx = cells.set_index(["stage", "task", "metric"])
    row = idx.loc[(1, "cls_a", "exact_match")]
    assert row["score"] == 75.0 and row["n"] == 4
    assert row["stderr"] == pytest.approx(_se(0.75))
    assert row["majority_rate"] == 75.0  # "yes", "Yes." normalise equal; 3 of 4
    row = idx.loc[(2, "cls_a", "rougeL")]
    assert row["score"] == 25.0
    assert row["stderr"] == pytest.approx(math.sqrt(500 / 3) / 2)
    gen = idx.loc[(1, "gen_b", "label_accuracy")]
    assert math.isnan(gen["score"]) and math.isnan(gen["stderr"]) and gen["n"] == 0
    assert idx.loc[(1, "gen_b", "exact_match"), "score"] == 25.0
    assert idx.xs("gen_b", level="task")["majority_rate"].isna().all()
    assert idx.loc[(2, "cls_u", "label_accuracy"), "score"] == 100.0


def test_cell_table_missing_table(predictions: dict[tuple[int, str], pd.DataFrame]) -> None:
    del predictions[(1, "cls_u")]
    with pytest.raises(ValueError, match=r"\(1, 'cls_u'\)"):
        cell_table(predictions, SEQUENCE, UNSEEN)


def test_cell_table_rejects_bad_inputs(predictions: dict[tuple[int, str], pd.DataFrame]) -> None:
    with pytest.raises(ValueError, match="both in the sequence and unseen"):
        cell_table(predictions, SEQUENCE, ["cls_a"])
    predictions[(0, "cls_a")] = predictions[(0, "cls_a")].drop(columns=["rougeL"])
    with pytest.raises(ValueError, match="rougeL"):
        cell_table(predictions, SEQUENCE, UNSEEN, metrics=["rougeL", "exact_match"])
    # without an explicit list, R has the metrics every table has
    assert set(cell_table(predictions, SEQUENCE, UNSEEN)["metric"]) == {
        "exact_match",
        "label_accuracy",
    }


def test_run_summary_exact_match(cells: pd.DataFrame) -> None:
    summary = run_summary(cells, SEQUENCE, UNSEEN)
    assert summary["metric"].tolist() == ["rougeL", "exact_match", "label_accuracy"]
    assert list(summary.columns[:2]) == ["metric", "T"]
    assert "unseen_mean_stage_2" in summary.columns and "unseen_mean_stage_3" not in summary
    em = summary.set_index("metric").loc["exact_match"]
    assert em["T"] == 2
    # EM matrix R (rows stage 0..2, cols cls_a, gen_b) = [[25, 0], [75, 25], [50, 75]]
    # SE: p=.25/.75 -> 21.65, p=.5 -> 25, p=0 -> 0.
    # AP = (50 + 75) / 2 = 62.5; se = 1/2 sqrt(25^2 + 21.65^2)
    assert em["AP"] == pytest.approx(62.5)
    assert em["AP_se"] == pytest.approx(0.5 * math.sqrt(_se(0.5) ** 2 + _se(0.75) ** 2))
    # BWT = R21 - R11 = 50 - 75 = -25; se = sqrt(25^2 + 21.65^2)
    assert em["BWT"] == pytest.approx(-25.0)
    assert em["BWT_se"] == pytest.approx(math.sqrt(_se(0.5) ** 2 + _se(0.75) ** 2))
    # FWT = R12 - R02 = 25 - 0 = 25; se = sqrt(21.65^2 + 0^2)
    assert em["FWT"] == pytest.approx(25.0)
    assert em["FWT_se"] == pytest.approx(_se(0.25))
    # F = R11 - R21 = 75 - 50 = 25 (T = 2: the max is over the trained row 1 only)
    assert em["F"] == pytest.approx(25.0)
    # With T = 2 the averaged variants coincide with BWT / FWT.
    assert em["BWT_avg"] == pytest.approx(-25.0)
    assert em["FWT_avg"] == pytest.approx(25.0)
    # Unseen: cls_u at stages 0, 1, 2 = 25, 50, 100; se at stage 2 (p = 1) = 0.
    assert em["unseen_mean"] == pytest.approx(100.0)
    assert em["unseen_mean_se"] == pytest.approx(0.0)
    assert [em[f"unseen_mean_stage_{i}"] for i in range(3)] == pytest.approx([25.0, 50.0, 100.0])


def test_run_summary_label_accuracy_nan_only_where_used(cells: pd.DataFrame) -> None:
    la = run_summary(cells, SEQUENCE, UNSEEN).set_index("metric").loc["label_accuracy"]
    # gen_b column is NaN: metrics touching it are NaN, BWT and F only use cls_a.
    assert math.isnan(la["AP"]) and math.isnan(la["FWT"]) and math.isnan(la["FWT_avg"])
    assert la["BWT"] == pytest.approx(-25.0)
    assert la["F"] == pytest.approx(25.0)
    assert la["unseen_mean"] == pytest.approx(100.0)


def test_run_summary_rouge_and_no_unseen(predictions: dict[tuple[int, str], pd.DataFrame]) -> None:
    seq_only = {k: v for k, v in predictions.items() if k[1] != "cls_u"}
    cells = cell_table(seq_only, SEQUENCE, [])
    summary = run_summary(cells, SEQUENCE, []).set_index("metric")
    rouge = summary.loc["rougeL"]
    # Every ROUGE cell is 25 with se s = sqrt(500/3)/2: AP = 25, se = s / sqrt(2); BWT = 0.
    s = math.sqrt(500 / 3) / 2
    assert rouge["AP"] == pytest.approx(25.0)
    assert rouge["AP_se"] == pytest.approx(s / math.sqrt(2))
    assert rouge["BWT"] == pytest.approx(0.0)
    assert rouge["BWT_se"] == pytest.approx(s * math.sqrt(2))
    for col in ("unseen_mean", "unseen_mean_se", "unseen_mean_stage_0", "unseen_mean_stage_2"):
        assert math.isnan(rouge[col])


def test_run_summary_missing_cell(cells: pd.DataFrame) -> None:
    trimmed = cells[~((cells["stage"] == 2) & (cells["task"] == "gen_b"))]
    with pytest.raises(ValueError, match="gen_b"):
        run_summary(trimmed, SEQUENCE, UNSEEN)


def test_matrix(cells: pd.DataFrame) -> None:
    wide = matrix(cells, "exact_match")
    assert list(wide.columns) == ["cls_a", "gen_b", "cls_u"]
    assert list(wide.index) == [0, 1, 2]
    np.testing.assert_allclose(wide.to_numpy(), [[25, 0, 25], [75, 25, 50], [50, 75, 100]])
    ns = matrix(cells, "label_accuracy", value="n")
    assert ns.loc[1, "gen_b"] == 0 and ns.loc[1, "cls_a"] == 4
    with pytest.raises(ValueError, match="no cells"):
        matrix(cells, "bleu")


def test_format_summary(cells: pd.DataFrame) -> None:
    text = format_summary(run_summary(cells, SEQUENCE, UNSEEN), "run-42")
    assert "run-42" in text
    em_line = next(line for line in text.splitlines() if line.startswith("| exact_match"))
    assert f"62.50 ± {0.5 * math.sqrt(_se(0.5) ** 2 + _se(0.75) ** 2):.2f}" in em_line
    assert "-25.00 ± " in em_line
    la_line = next(line for line in text.splitlines() if line.startswith("| label_accuracy"))
    assert "n/a" in la_line
    assert "2 se" in text and "noise" in text


def test_end_to_end_from_raw_predictions() -> None:
    """score_predictions output feeds cell_table directly."""
    raw = {
        (stage, task): pd.DataFrame(
            {
                "id": ["i0", "i1"],
                "prediction": ["Positive!", "negative"] if stage else ["no idea", "negative"],
                "references": [["positive"], ["negative"]],
                "labels": [["positive", "negative"]] * 2,
            }
        )
        for stage in range(2)
        for task in ["sent"]
    }
    scored = {k: score_predictions(v) for k, v in raw.items()}
    cells = cell_table(scored, ["sent"], [])
    wide = matrix(cells, "label_accuracy")
    assert wide.loc[0, "sent"] == 50.0 and wide.loc[1, "sent"] == 100.0
    summary = run_summary(cells, ["sent"], []).set_index("metric")
    assert summary.loc["exact_match", "AP"] == 100.0
    assert math.isnan(summary.loc["exact_match", "BWT"])


def test_format_matrix_shows_se_and_majority():
    cells = pd.DataFrame(
        {
            "stage": [0, 0, 1, 1],
            "task": ["a", "b", "a", "b"],
            "role": ["sequence", "unseen", "sequence", "unseen"],
            "metric": ["exact_match"] * 4,
            "score": [50.0, 10.0, 75.0, 12.5],
            "stderr": [5.0, 3.0, 4.3, 3.3],
            "n": [100] * 4,
            "majority_rate": [52.0, float("nan"), 52.0, float("nan")],
        }
    )
    text = format_matrix(cells, "exact_match")
    assert "75.0±4.3" in text and "10.0±3.0" in text
    majority_line = [line for line in text.splitlines() if line.startswith("majority")][0]
    assert "52.0" in majority_line and "-" in majority_line


# --- the trained-prompt protocol (the SAPO paper's) ----------------------------------------------


def _with_trained(predictions, task: str, first_stage: int, em: list[float]):
    """Prediction tables where ``task`` was also evaluated with its trained prompt."""
    out = {}
    for key, table in predictions.items():
        table = table.assign(prompt_id="original")
        if key[1] == task and key[0] >= first_stage:
            trained = table.assign(prompt_id="trained", exact_match=em, label_accuracy=em)
            table = pd.concat([table, trained], ignore_index=True)
        out[key] = table
    return out


def test_trained_prompt_protocol_uses_the_trained_prompt_only_for_seen_tasks(predictions):
    from promptcl.analysis.aggregate import split_prompts, trained_prompt_tables

    tables = _with_trained(predictions, "cls_a", 1, [100.0] * 4)
    chosen = trained_prompt_tables(tables, SEQUENCE, {"cls_a": 3, "gen_b": 0})
    cells = cell_table(chosen, SEQUENCE, UNSEEN)
    original = cell_table(split_prompts(tables)["original"], SEQUENCE, UNSEEN)

    def em(frame, stage, task):
        rows = frame.query("stage == @stage and task == @task and metric == 'exact_match'")
        return rows["score"].item()

    assert em(cells, 1, "cls_a") == em(cells, 2, "cls_a") == 100.0  # trained with candidate 3
    assert em(original, 1, "cls_a") == 75.0 and em(original, 2, "cls_a") == 50.0
    assert em(cells, 0, "cls_a") == 25.0, "the base model row keeps the original prompt"
    for stage in (0, 1, 2):  # trained with the original, and unseen: the original prompt
        assert em(cells, stage, "gen_b") == em(original, stage, "gen_b")
        assert em(cells, stage, "cls_u") == em(original, stage, "cls_u")
    summary = run_summary(cells, SEQUENCE, UNSEEN).set_index("metric")
    assert summary.loc["exact_match", "AP"] == pytest.approx((100.0 + 75.0) / 2)


def test_trained_prompt_protocol_never_falls_back_silently(predictions):
    from promptcl.analysis.aggregate import trained_prompt_tables

    tables = {k: t.assign(prompt_id="original") for k, t in predictions.items()}
    with pytest.raises(ValueError, match="trained prompt.*cls_a"):
        trained_prompt_tables(tables, SEQUENCE, {"cls_a": 3})
    assert trained_prompt_tables(tables, SEQUENCE, {"cls_a": 0, "gen_b": 0}).keys() == tables.keys()
