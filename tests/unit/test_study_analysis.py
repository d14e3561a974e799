"""The study's outcome table and analyses on synthetic cells, checked by hand and against scipy."""

import numpy as np
import pandas as pd
import pytest
from scipy import stats as sp

from promptcl.analysis.stats import BranchSample, mean_correlation_ci, sd_interval
from promptcl.study.analysis import (
    PREDICTORS,
    gradient_groups,
    outcome_correlations,
    outcome_table,
    predictor_table,
    spread_table,
)

T1, T2, UNSEEN = "taskA", "taskB", ["taskC"]
# candidate -> final scores (rougeL) of T1, T2 (original prompt), T2 (trained prompt), unseen
FINAL = {
    0: (50.0, 70.0, 70.0, 40.0),
    1: (40.0, 71.0, 74.0, 30.0),
    2: (55.0, 69.0, 68.0, 45.0),
    3: (30.0, 72.0, 75.0, 20.0),
    4: (45.0, 70.0, 71.0, 38.0),
}


def _cells(cid: int) -> pd.DataFrame:
    t1, t2, t2_trained, unseen = FINAL[cid]
    rows = []
    for protocol in ("original_prompt", "trained_prompt"):
        for task, score in ((T1, t1), (T2, t2 if protocol == "original_prompt" else t2_trained)):
            rows.append((protocol, 2, task, "rougeL", score))
            rows.append((protocol, 1, task, "rougeL", 0.0))  # an earlier stage: ignored
        rows.append((protocol, 2, UNSEEN[0], "rougeL", unseen))
    return pd.DataFrame(rows, columns=["protocol", "stage", "task", "metric", "score"])


@pytest.fixture
def outcomes() -> pd.DataFrame:
    return outcome_table("b", {cid: _cells(cid) for cid in FINAL}, T1, T2, UNSEEN)


def test_outcomes_are_final_scores_and_changes_against_the_original(outcomes):
    row = outcomes.query("candidate_id == 3 and role == 'T1'").iloc[0]
    assert (row["score"], row["delta"], row["relative"]) == (30.0, -20.0, pytest.approx(-0.4))
    trained = outcomes.query("candidate_id == 1 and role == 'T2_trained'").iloc[0]
    assert trained["score"] == 74.0 and trained["delta"] == 4.0
    assert set(outcomes["role"]) == {"T1", "T2", "T2_trained", "unseen"}
    assert (outcomes.query("candidate_id == 0")["delta"] == 0).all()


def test_missing_original_cell_is_an_error():
    with pytest.raises(ValueError, match="original-prompt cell"):
        outcome_table("b", {1: _cells(1)}, T1, T2, UNSEEN)


def test_spread_is_range_and_sd_across_candidates(outcomes):
    table = spread_table(outcomes, "rougeL")
    t1 = table.query("role == 'T1'").iloc[0]
    values = [v[0] for v in FINAL.values()]
    assert t1["range"] == pytest.approx(25.0)
    assert t1["sd"] == pytest.approx(np.std(values, ddof=1))
    assert (t1["sd_ci_low"], t1["sd_ci_high"]) == pytest.approx(sd_interval(values))
    assert t1["sd_ci_low"] <= t1["sd"] <= t1["sd_ci_high"]
    assert not any(c.startswith("range_ci") for c in table.columns)  # the range has no interval
    assert not t1["in_task"] and table.query("role == 'T2'")["in_task"].all()


def test_outcome_correlations_equal_scipy(outcomes):
    table = outcome_correlations(outcomes, "rougeL", resamples=200)
    row = table.query("outcome_a == 'T1:taskA' and outcome_b == 'unseen:taskC'")
    t1 = [v[0] - 50.0 for v in FINAL.values()]
    unseen = [v[3] - 40.0 for v in FINAL.values()]
    got = row.set_index("kind")["r"]
    assert got["pearson"] == pytest.approx(sp.pearsonr(t1, unseen).statistic)
    assert got["spearman"] == pytest.approx(sp.spearmanr(t1, unseen).statistic)


def test_predictors_are_oriented_and_ranked(outcomes):
    # loss exactly anti-ordered with T1's change: -loss correlates +1 with it
    t1_delta = {cid: v[0] - 50.0 for cid, v in FINAL.items()}
    measures = pd.DataFrame(
        {
            "branch": "b",
            "candidate_id": list(FINAL),
            "loss_batch_mean": [2.0 - 0.01 * t1_delta[c] for c in FINAL],
            "prompt_tokens": [10, 30, 20, 15, 12],
        }
    )
    table = predictor_table(measures, outcomes, "rougeL", resamples=200)
    task_row = table.query(
        "scope == 'task' and role == 'T1' and measurement == 'loss_batch_mean' "
        "and kind == 'pearson'"
    ).iloc[0]
    assert task_row["r"] == pytest.approx(1.0)
    assert task_row["label"] == PREDICTORS["loss_batch_mean"][0]
    mean = table.query("scope == 'mean' and kind == 'spearman'").set_index("measurement")["r"]
    unseen = [v[3] - 40.0 for v in FINAL.values()]
    loss = measures["loss_batch_mean"].to_numpy()
    want = np.mean([1.0, sp.spearmanr(-loss, unseen).statistic])
    assert mean["loss_batch_mean"] == pytest.approx(want)
    ranks = table.drop_duplicates("measurement").set_index("measurement")["rank"]
    assert ranks["loss_batch_mean"] == 1
    assert set(table.query("scope == 'task'")["role"]) == {"T1", "unseen"}  # cross-task only


def test_mean_predictor_interval_draws_candidates_once_per_branch(outcomes):
    # a second branch whose unseen outcome is missing for candidate 4; rows in shuffled order
    other = outcomes.assign(branch="c")
    other = other[~((other["candidate_id"] == 4) & (other["role"] == "unseen"))]
    both = pd.concat([outcomes, other]).sample(frac=1.0, random_state=0)
    loss = {0: 2.0, 1: 2.3, 2: 1.7, 3: 2.1, 4: 1.9}
    measures = pd.DataFrame(
        [
            {"branch": b, "candidate_id": c, "loss_batch_mean": v}
            for b in "cb"
            for c, v in loss.items()
        ]
    )
    table = predictor_table(measures, both, "rougeL", resamples=300, seed=3)
    mean = table.query("scope == 'mean' and kind == 'pearson'").iloc[0]
    ids = sorted(FINAL)
    x = -np.array([loss[c] for c in ids])
    t1 = np.array([FINAL[c][0] - 50.0 for c in ids])
    unseen = np.array([FINAL[c][3] - 40.0 for c in ids])
    want = mean_correlation_ci(
        [
            BranchSample(ids, x, [t1, unseen]),
            BranchSample(ids, x, [t1, np.append(unseen[:4], np.nan)]),
        ],
        "pearson",
        resamples=300,
        seed=3,
    )
    assert mean[["r", "ci_low", "ci_high", "n", "branches"]].to_dict() == pytest.approx(want)
    assert (mean["n"], mean["branches"]) == (10, 2)  # candidates resampled, not × tasks


def test_gradient_groups_take_the_lowest_and_highest_loss_candidates():
    measures = pd.DataFrame(
        {"branch": "b", "candidate_id": [0, 1, 2], "loss_batch_mean": [1.5, 1.2, 1.9]}
    )
    gradients = pd.DataFrame(
        [
            {
                "branch": "b",
                "candidate_id": c,
                "module": m,
                "layer": layer,
                "cosine": 0.1 * c + layer,
            }
            for c in range(3)
            for m in ("q_proj", "v_proj")
            for layer in range(4)
        ]
    )
    table = gradient_groups(measures, gradients, resamples=200)
    assert set(table.query("group == 'lowest_loss'")["candidate_id"]) == {1}
    assert set(table.query("group == 'highest_loss'")["candidate_id"]) == {2}
    q = table.query("group == 'lowest_loss' and module == 'q_proj'")
    assert q["cosine"].tolist() == pytest.approx([0.1, 1.1, 2.1, 3.1])
    assert q["module_mean"].iloc[0] == pytest.approx(1.6)
