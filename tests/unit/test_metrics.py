"""Tests for instance scores and continual metrics against hand-computed values."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest

from promptcl.analysis.metrics import (
    OUTCOMES,
    REGISTRY,
    coefficient_matrices,
    compared_metrics,
    continual_metrics,
    exact_match,
    label_accuracy,
    mean_stderr,
    metric,
    metrics_of,
    normalize_answer,
    rouge_l,
    score_predictions,
)


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        ("The Cat!", "the cat"),  # SuperNI keeps articles
        ("  an   apple,  a pear ", "an apple a pear"),
        ("Positive:\n1. positive", "positive 1 positive"),
        ("I'd rate it 4 stars.", "id rate it 4 stars"),
        ("theatre", "theatre"),
        ("", ""),
    ],
)
def test_normalize_answer(raw: str, expected: str) -> None:
    assert normalize_answer(raw) == expected


def test_exact_match() -> None:
    assert exact_match("Answer.", ["answer"]) == 100.0
    assert exact_match("an answer", ["wrong", "An Answer"]) == 100.0
    assert exact_match("The answer.", ["answer"]) == 0.0, "articles count, as in SuperNI"
    assert exact_match("answers", ["answer"]) == 0.0
    assert exact_match("", [""]) == 100.0
    with pytest.raises(ValueError):
        exact_match("x", [])


METRICS = tuple(REGISTRY)
BINARY_METRICS = tuple(m.name for m in REGISTRY.values() if m.binary)


def test_metric_registry() -> None:
    assert METRICS == ("rougeL", "exact_match", "label_accuracy", "gold_logprob", "rank_accuracy")
    assert BINARY_METRICS == ("exact_match", "label_accuracy", "rank_accuracy")
    assert metrics_of(["generation"]) == ("rougeL", "exact_match", "label_accuracy")
    assert metrics_of(["likelihood", "generation"]) == METRICS
    assert compared_metrics(["generation"]) == ("rougeL", "label_accuracy")
    assert compared_metrics(["likelihood"]) == ("gold_logprob", "rank_accuracy")
    assert not metric("gold_logprob").bounded and metric("rank_accuracy").labels_only
    with pytest.raises(ValueError, match="unknown metric 'bleu'"):
        metric("bleu")
    with pytest.raises(ValueError, match="evaluation.outcomes"):
        metrics_of(["sampling"])


def test_the_schema_leaves_metric_names_to_the_registry() -> None:
    """comparison.metrics and study.metric are checked against :data:`REGISTRY` while the DAG is
    built (no enum in the schema to fall out of step); the outcomes enum is the evaluations'."""
    import yaml

    from promptcl.dag.plan import check_metrics
    from promptcl.errors import ConfigError
    from tests.helpers import REPO

    schema = yaml.safe_load((REPO / "config/schema.yaml").read_text())["properties"]
    assert "enum" not in schema["comparison"]["properties"]["metrics"]["items"]
    assert "enum" not in schema["study"]["properties"]["metric"]
    outcomes = schema["evaluation"]["properties"]["outcomes"]["items"]["enum"]
    assert tuple(outcomes) == OUTCOMES
    config = {
        "evaluation": {"outcomes": ["generation"]},
        "comparison": {"metrics": ["rougeL", "bleu"]},
    }
    with pytest.raises(ConfigError, match=r"comparison.metrics: unknown metric 'bleu'.*rougeL"):
        check_metrics(config)
    config["comparison"]["metrics"] = ["gold_logprob"]
    with pytest.raises(ConfigError, match="comparison.metrics: gold_logprob is not computed"):
        check_metrics(config)
    config["comparison"]["metrics"] = ["rougeL", "label_accuracy"]
    check_metrics(config)


def test_rouge_l_known_values() -> None:
    assert rouge_l("the cat sat on the mat", ["the cat sat on the mat"]) == pytest.approx(100.0)
    assert rouge_l("alpha beta", ["gamma delta"]) == 0.0
    # pred tokens [cat, sat] (2), ref [the, cat, sat, on, the, mat] (6): LCS = 2,
    # P = 2/2 = 1, R = 2/6 = 1/3, F = 2PR/(P+R) = (2/3)/(4/3) = 0.5 -> 50.
    assert rouge_l("cat sat", ["the cat sat on the mat"]) == pytest.approx(50.0)
    # pred [the, cat, sat, on, the, mat], ref [the, cat, lay, on, a, mat]: LCS the-cat-on-mat = 4,
    # P = R = 4/6 -> F = 2/3 -> 66.67.
    assert rouge_l("the cat sat on the mat", ["the cat lay on a mat"]) == pytest.approx(200 / 3)
    # Stemming: "killed" and "kill" share a stem.
    assert rouge_l("police killed the gunman", ["police kill the gunman"]) == pytest.approx(100.0)
    # Max over references.
    assert rouge_l("cat sat", ["gamma delta", "the cat sat on the mat"]) == pytest.approx(50.0)
    assert rouge_l("", ["something"]) == 0.0


@pytest.mark.parametrize(
    ("prediction", "references", "labels", "expected"),
    [
        ("Positive:\n1. positive", ["positive"], ["positive", "negative"], 100.0),
        ("Positive:\n1. positive", ["negative"], ["positive", "negative"], 0.0),
        ("Negative Review", ["Negative Review"], ["Positive Review", "Negative Review"], 100.0),
        ("Negative Review", ["Positive Review"], ["Positive Review", "Negative Review"], 0.0),
        ("I'd rate it 4 stars", ["4"], ["1", "2", "3", "4", "5"], 100.0),
        ("I'd rate it 4 stars", ["5"], ["1", "2", "3", "4", "5"], 0.0),
        # Earliest label wins even if another label appears later.
        ("negative, not positive", ["negative"], ["positive", "negative"], 100.0),
        # Whole words only: "unpositive" does not contain the label "positive".
        ("unpositive", ["positive"], ["positive", "negative"], 0.0),
        # No label occurs -> 0.
        ("I cannot tell", ["positive"], ["positive", "negative"], 0.0),
        # Tie at the same position -> the longer label.
        ("not sure at all", ["not sure"], ["not", "not sure"], 100.0),
        ("not sure at all", ["not"], ["not", "not sure"], 0.0),
        # Only the first reference counts.
        ("yes", ["no", "yes"], ["yes", "no"], 0.0),
    ],
)
def test_label_accuracy(
    prediction: str, references: list[str], labels: list[str], expected: float
) -> None:
    assert label_accuracy(prediction, references, labels) == expected


def test_label_accuracy_generation_task_is_nan() -> None:
    assert math.isnan(label_accuracy("anything", ["ref"], []))
    assert math.isnan(label_accuracy("anything", ["ref"], np.array([], dtype=object)))


def test_score_predictions() -> None:
    df = pd.DataFrame(
        {
            "id": ["a", "b", "c"],
            "prediction": ["Positive", "the cat sat", "cat sat"],
            # parquet round-trips list columns as numpy arrays; both must work
            "references": [["positive"], np.array(["the cat sat"]), ["the cat sat on the mat"]],
            "labels": [["positive", "negative"], np.array([], dtype=object), []],
        }
    )
    out = score_predictions(df)
    assert "rougeL" not in df.columns  # input untouched
    assert list(out["id"]) == ["a", "b", "c"]
    for col in metrics_of(["generation"]):
        assert out[col].dtype == np.float64
    assert out["exact_match"].tolist() == [100.0, 100.0, 0.0]
    assert out["rougeL"].tolist() == pytest.approx([100.0, 100.0, 50.0])
    assert out["label_accuracy"].iloc[0] == 100.0
    assert out["label_accuracy"].iloc[1:].isna().all()


def test_mean_stderr_binary() -> None:
    # p = 0.75, n = 4: sqrt(0.75 * 0.25 / 4) * 100 = 21.6506...
    mean, se, n = mean_stderr([100, 100, 100, 0, math.nan], binary=True)
    assert (mean, n) == (75.0, 4)
    assert se == pytest.approx(math.sqrt(0.75 * 0.25 / 4) * 100)
    assert mean_stderr([100, 100], binary=True) == (100.0, 0.0, 2)


def test_mean_stderr_continuous() -> None:
    # values 10, 20, 30, 40: mean 25, sample var = (225+25+25+225)/3 = 500/3,
    # se = sqrt(500/3) / sqrt(4) = 6.4549...
    mean, se, n = mean_stderr([10.0, 20.0, 30.0, 40.0], binary=False)
    assert (mean, n) == (25.0, 4)
    assert se == pytest.approx(math.sqrt(500 / 3) / 2)
    mean, se, n = mean_stderr([42.0, math.nan], binary=False)
    assert (mean, n) == (42.0, 1) and math.isnan(se)


def test_mean_stderr_empty() -> None:
    for values in ([], [math.nan, math.nan]):
        mean, se, n = mean_stderr(values, binary=True)
        assert math.isnan(mean) and math.isnan(se) and n == 0


# Hand-worked T = 3 example. Rows = stage 0..3, columns = tasks 1..3 (R[i][j] 1-based below).
R3 = np.array(
    [
        [10.0, 20.0, 30.0],
        [60.0, 25.0, 45.0],
        [50.0, 70.0, 40.0],
        [40.0, 65.0, 80.0],
    ]
)
SE3 = np.array(
    [
        [1.0, 2.0, 3.0],
        [4.0, 5.0, 6.0],
        [7.0, 8.0, 9.0],
        [10.0, 11.0, 12.0],
    ]
)


def test_continual_metrics_values_t3() -> None:
    m = continual_metrics(R3)
    # AP = (40 + 65 + 80) / 3 = 61.667
    assert m["AP"][0] == pytest.approx(185 / 3)
    # BWT = 1/2 [(R31 - R11) + (R32 - R22)] = 1/2 [(40-60) + (65-70)] = -12.5
    assert m["BWT"][0] == pytest.approx(-12.5)
    # FWT = 1/2 [(R12 - R02) + (R23 - R03)] = 1/2 [(25-20) + (40-30)] = 7.5
    assert m["FWT"][0] == pytest.approx(7.5)
    # F = 1/2 [(max(R11, R21) - R31) + (max(R22) - R32)] = 1/2 [(60 - 40) + (70 - 65)] = 12.5
    # (rows j..T-1 for task j; rows 0 and 1 of task 2 are below 70, so the old max agreed)
    assert m["F"][0] == pytest.approx(12.5)
    # BWT_avg = 1/2 [ i=2: (R21 - R11) = -10 ; i=3: 1/2 ((40-60) + (65-70)) = -12.5 ] = -11.25
    assert m["BWT_avg"][0] == pytest.approx(-11.25)
    # FWT_avg = 1/2 [ i=1: 1/2 ((R12-R02) + (R13-R03)) = 1/2 (5 + 15) = 10 ;
    #                 i=2: (R23 - R03) = 10 ] = 10
    assert m["FWT_avg"][0] == pytest.approx(10.0)
    # No SE matrix -> se is NaN.
    assert all(math.isnan(se) for _, se in m.values())
    # plasticity = (R11 + R22 + R33) / 3 = (60 + 70 + 80) / 3
    assert m["plasticity"][0] == pytest.approx(70.0)
    # ACC = 1/3 [R11 + (R21 + R22) / 2 + (R31 + R32 + R33) / 3] = 1/3 [60 + 60 + 185/3]
    assert m["ACC"][0] == pytest.approx((60 + 60 + 185 / 3) / 3)
    assert set(m) == {"AP", "BWT", "FWT", "F", "BWT_avg", "FWT_avg", "plasticity", "ACC"}


def test_continual_metrics_se_t3() -> None:
    m = continual_metrics(R3, SE3)
    # AP: 1/3 on R31, R32, R33 (se 10, 11, 12): sqrt(100 + 121 + 144) / 3
    assert m["AP"][1] == pytest.approx(math.sqrt(365) / 3)
    # BWT: +-1/2 on R31 (10), R11 (4), R32 (11), R22 (8): 1/2 sqrt(100 + 16 + 121 + 64)
    assert m["BWT"][1] == pytest.approx(0.5 * math.sqrt(301))
    # FWT: +-1/2 on R12 (5), R02 (2), R23 (9), R03 (3): 1/2 sqrt(25 + 4 + 81 + 9)
    assert m["FWT"][1] == pytest.approx(0.5 * math.sqrt(119))
    # F: argmax cells R11 (4) and R22 (8), minus R31 (10) and R32 (11), weight 1/2
    assert m["F"][1] == pytest.approx(0.5 * math.sqrt(16 + 64 + 100 + 121))
    # BWT_avg coefficients: R21 +1/2 (7), R11 -3/4 (4), R31 +1/4 (10), R32 +1/4 (11), R22 -1/4 (8)
    # se^2 = 12.25 + 9 + 6.25 + 7.5625 + 4 = 39.0625 -> se = 6.25
    assert m["BWT_avg"][1] == pytest.approx(6.25)
    # FWT_avg coefficients: R12 +1/4 (5), R02 -1/4 (2), R13 +1/4 (6), R03 -3/4 (3), R23 +1/2 (9)
    # se^2 = (25 + 4 + 36 + 81) / 16 + 81 / 4 = 9.125 + 20.25 = 29.375
    assert m["FWT_avg"][1] == pytest.approx(math.sqrt(29.375))


def test_coefficient_matrices_reproduce_values() -> None:
    coeffs = coefficient_matrices(R3)
    m = continual_metrics(R3)
    for name, C in coeffs.items():
        assert C.shape == R3.shape
        assert float(np.sum(C * R3)) == pytest.approx(m[name][0])
    # BWT_avg coefficients as listed in test_continual_metrics_se_t3.
    expected = np.zeros((4, 3))
    expected[2, 0], expected[1, 0], expected[3, 0] = 0.5, -0.75, 0.25
    expected[3, 1], expected[2, 1] = 0.25, -0.25
    np.testing.assert_allclose(coeffs["BWT_avg"], expected)


def test_continual_metrics_t1() -> None:
    m = continual_metrics(np.array([[10.0], [30.0]]), np.array([[1.0], [2.0]]))
    assert m["AP"] == (30.0, 2.0)
    assert m["plasticity"] == (30.0, 2.0) and m["ACC"] == (30.0, 2.0)
    for name in ("BWT", "FWT", "F", "BWT_avg", "FWT_avg"):
        assert math.isnan(m[name][0]) and math.isnan(m[name][1])


def test_continual_metrics_nan_propagation() -> None:
    # R01 was a max candidate of F before F took its max over the trained rows j..T-1 only: no
    # metric uses it now, so a NaN there changes nothing.
    ref = continual_metrics(R3, SE3)
    R = R3.copy()
    R[0, 0] = math.nan
    m = continual_metrics(R, SE3)
    for name in ("AP", "BWT", "FWT", "F", "BWT_avg", "FWT_avg", "plasticity"):
        assert m[name] == pytest.approx(ref[name])
    # R21 is a max candidate of F (task 1 after stage 2): F becomes NaN, as do BWT_avg and ACC
    # that read it, while AP, BWT and FWT do not use it.
    R = R3.copy()
    R[2, 0] = math.nan
    m = continual_metrics(R, SE3)
    assert math.isnan(m["F"][0]) and math.isnan(m["F"][1])
    assert math.isnan(m["BWT_avg"][0]) and math.isnan(m["ACC"][0])
    for name in ("AP", "BWT", "FWT", "FWT_avg", "plasticity"):
        assert m[name] == pytest.approx(ref[name])
    # A NaN final-stage cell hits AP, BWT and F values; a NaN SE cell only the se.
    R = R3.copy()
    R[3, 0] = math.nan
    m = continual_metrics(R, SE3)
    assert math.isnan(m["AP"][0]) and math.isnan(m["BWT"][0]) and math.isnan(m["F"][0])
    assert m["FWT"][0] == pytest.approx(7.5)
    SE = SE3.copy()
    SE[3, 2] = math.nan
    m = continual_metrics(R3, SE)
    assert m["AP"][0] == pytest.approx(185 / 3) and math.isnan(m["AP"][1])
    assert m["BWT"][1] == pytest.approx(0.5 * math.sqrt(301))


def test_forgetting_ignores_scores_from_before_a_task_was_trained() -> None:
    """F maxes task j over rows j..T-1 (Chaudhry et al. 2018): a zero-shot score (row 0), or a
    score before stage j, above every trained state is not forgotten knowledge."""
    R = np.array(
        [
            [90.0, 20.0, 30.0],  # task 1 zero-shot beats every trained state
            [60.0, 95.0, 45.0],  # task 2 after stage 1, before it was trained: also higher
            [50.0, 70.0, 40.0],
            [40.0, 65.0, 80.0],
        ]
    )
    # old F, max over rows 0..2: 1/2 [(90 - 40) + (95 - 65)] = 40
    # new F, max over rows j..2: 1/2 [(max(60, 50) - 40) + (70 - 65)] = 12.5
    assert continual_metrics(R)["F"][0] == pytest.approx(12.5)
    expected = np.zeros((4, 3))
    expected[1, 0], expected[2, 1] = 0.5, 0.5  # the argmax cells R11 and R22
    expected[3, 0], expected[3, 1] = -0.5, -0.5
    np.testing.assert_allclose(coefficient_matrices(R)["F"], expected)
    # a task whose best trained state is a later one: task 1 peaks after stage 2
    R[2, 0] = 65.0
    assert continual_metrics(R)["F"][0] == pytest.approx(0.5 * ((65 - 40) + (70 - 65)))
    # a NaN before the task's stage is unused; a NaN in a trained row makes F NaN
    R[0, 0], R[1, 1] = math.nan, math.nan
    assert continual_metrics(R)["F"][0] == pytest.approx(15.0)
    R[1, 0] = math.nan
    assert math.isnan(continual_metrics(R)["F"][0])


def test_forgetting_with_two_tasks_is_the_drop_from_stage_1() -> None:
    """With T = 2 the only candidate is R11: F = R11 - R21, whatever the zero-shot R01."""
    R = np.array([[80.0, 10.0], [50.0, 60.0], [30.0, 70.0]])
    m = continual_metrics(R, np.array([[1.0, 1.0], [3.0, 1.0], [4.0, 1.0]]))
    assert m["F"][0] == pytest.approx(20.0)  # old F: max(80, 50) - 30 = 50
    assert m["F"][1] == pytest.approx(5.0)  # sqrt(3^2 + 4^2)
    np.testing.assert_allclose(
        coefficient_matrices(R)["F"], np.array([[0.0, 0.0], [1.0, 0.0], [-1.0, 0.0]])
    )
    # a trained state below the final one: negative forgetting (the task improved)
    R[1, 0] = 20.0
    assert continual_metrics(R)["F"][0] == pytest.approx(-10.0)


@pytest.mark.parametrize("shape", [(3, 3), (2, 2), (1, 0), (4,)])
def test_continual_metrics_bad_shape(shape: tuple[int, ...]) -> None:
    with pytest.raises(ValueError, match=r"\(T\+1, T\)"):
        continual_metrics(np.zeros(shape))


def test_continual_metrics_se_shape_mismatch() -> None:
    with pytest.raises(ValueError, match="SE matrix shape"):
        continual_metrics(R3, np.zeros((3, 3)))


# --- one-letter answers (multiple choice) -----------------------------------------------------


def test_one_letter_answers_are_not_erased_by_article_removal():
    """'A' is an article to SQuAD's normalisation: an empty prediction must not match it."""
    assert normalize_answer("A") == "a" and normalize_answer("A.") == "a"
    assert exact_match("", ["A"]) == 0.0
    assert exact_match("A", ["A"]) == 100.0 and exact_match("(A)", ["A"]) == 100.0
    assert exact_match("B", ["A"]) == 0.0


def test_multiple_choice_task_scores_letters(tmp_path):
    """task073 (CommonsenseQA): references are the letters A-E."""
    from promptcl.tasks.files import TaskSource, read_split, resolve_task
    from tests.helpers import REPO

    files = resolve_task("task073", [TaskSource("superni", REPO / "resources/tasks/superni")])
    table = read_split(files, "test").head(40)
    labels = list(table["labels"].iloc[0])
    assert labels == ["A", "B", "C", "D", "E"]
    truth = [refs[0] for refs in table["references"]]
    wrong = [labels[(labels.index(r) + 1) % 5] for r in truth]
    for predictions, expected in (
        (truth, 100.0),
        ([f"The answer is {r}." for r in truth], None),
        ([""] * len(truth), 0.0),
        (wrong, 0.0),
    ):
        scored = score_predictions(table.assign(prediction=predictions))
        assert scored["label_accuracy"].mean() == (100.0 if expected is None else expected)
        if expected is not None:
            assert scored["exact_match"].mean() == expected
    # "A. something" states the letter A first: label accuracy credits it
    assert label_accuracy("A. express information", ["A"], labels) == 100.0
    assert label_accuracy("", ["A"], labels) == 0.0
