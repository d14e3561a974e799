"""The study as runs: one T1 training per (pair, method, seed), every T2 cell forked from it."""

from __future__ import annotations

from types import SimpleNamespace

import pandas as pd
import pytest
import yaml
from snakemake.utils import validate

from promptcl.dag.plan import WorkflowPlan
from promptcl.dag.study_design import trained_candidates
from promptcl.errors import ConfigError
from promptcl.store import paths
from tests.helpers import REPO


def study_plan(**study) -> WorkflowPlan:
    config = yaml.safe_load((REPO / "config/config.yaml").read_text())
    config.update(yaml.safe_load((REPO / "config/study.yaml").read_text()))
    config["study"].update(study)
    validate(config, str(REPO / "config/schema.yaml"))
    return WorkflowPlan.from_config(config, REPO)


def wc(**kw):
    return SimpleNamespace(keys=lambda: kw.keys(), **kw)


def test_the_bundled_study_config_is_a_study_without_other_runs():
    plan = study_plan()
    assert plan.runs == {}
    assert len(plan.branches) == 3
    branch = plan.branches["study_task195_task1310-inclora-s0"]
    assert branch.parent == "study_task195_task1310-inclora-original-s0"
    assert branch.cell(3) == "study_task195_task1310-inclora-fixed_3-s0"
    assert branch.unseen == ("task073", "task591", "task875")
    assert plan.all_targets(None) == plan.study.targets()
    # evaluated by likelihood only, its outcome the gold answer's log-likelihood
    assert plan.outcomes == ["likelihood"] and plan.config["study"]["metric"] == "gold_logprob"
    assert set(plan.run_evaluations(wc(run=branch.cell(3)))) == {
        "zero_shot_likelihood",
        "stage_likelihood",
    }


def test_cells_share_the_parents_first_stage():
    plan = study_plan(pairs=[["task195", "task1310"]], methods=["inclora", "olora"], seeds=[0, 1])
    assert len(plan.branches) == 4
    cell = "study_task195_task1310-olora-fixed_2-s1"
    parent = "study_task195_task1310-olora-original-s1"
    assert plan.all_runs[cell].fork == (parent, 1)
    # O-LoRA's stage 1 is IncLoRA's (lambda2 = 0): the parent forks from the IncLoRA parent
    first = "study_task195_task1310-inclora-original-s1"
    assert plan.all_runs[parent].fork == (first, 1)
    assert plan.owner(cell, 1) == first and plan.owner(cell, 2) == cell
    assert plan.owner(parent, 2) == parent
    # T2's stage starts from the shared T1 adapter; its predictions after stage 1 are that run's
    assert plan.state_before(wc(run=cell, stage="2")) == [
        paths.fill(paths.ADAPTER, run=first, stage=1)
    ]
    assert plan.stage_predictions(wc(run=cell)) == [
        paths.fill(paths.PREDICTIONS, run=first, stage=1),
        paths.fill(paths.PREDICTIONS, run=cell, stage=2),
    ]
    config = yaml.safe_load((REPO / "config/config.yaml").read_text())
    config.update(yaml.safe_load((REPO / "config/study.yaml").read_text()))
    config["study"]["methods"] = ["olora"]
    config["olora"] = {"lambda2": 0.1}  # the L2 term acts at stage 1: nothing to share
    validate(config, str(REPO / "config/schema.yaml"))
    own = WorkflowPlan.from_config(config, REPO)
    own_cell = "study_task195_task1310-olora-fixed_2-s0"
    assert own.owner(own_cell, 1) == "study_task195_task1310-olora-original-s0"
    assert own.host_runs == {}
    assert plan.stage_task(wc(run=cell, stage="2")) == "task1310"
    with pytest.raises(ConfigError, match="stage 1 of run .* is stage 1 of"):
        plan.stage_task(wc(run=cell, stage="1"))


def test_measurements_start_from_the_state_t2_trains_from():
    plan = study_plan()
    inputs = plan.study.measure_inputs(wc(branch="study_task195_task1310-inclora-s0"))
    assert inputs["adapters"] == [
        paths.fill(paths.ADAPTER, run="study_task195_task1310-inclora-original-s0", stage=1)
    ]
    assert inputs["t2_train"] == paths.fill(paths.TASK_SPLIT, task="task1310", split="train")


def test_trained_candidates_are_the_valid_not_held_out_first_n():
    table = pd.DataFrame(
        {
            "candidate_id": range(6),
            "valid": [True, True, False, True, True, True],
            "heldout": [False, False, False, False, False, True],
        }
    )
    assert trained_candidates(table, None) == [0, 1, 3, 4]
    assert trained_candidates(table, 3) == [0, 1, 3]


@pytest.mark.parametrize(
    ("study", "message"),
    [
        ({"pairs": [["task195", "task195"]]}, "T1 and T2 are the same task"),
        ({"unseen": ["task1310"]}, "also trained in study.pairs\\[0\\]"),
        ({"pairs": [["task195", "no_such_task"]]}, "no_such_task"),
    ],
)
def test_bad_study_configs_name_the_key(study, message):
    with pytest.raises(ConfigError, match=message):
        study_plan(**study)


def test_no_runs_and_no_study_is_an_error():
    with pytest.raises(ConfigError, match="declares no run"):
        study_plan(pairs=[])
