"""The prompt-impact study through the tiny-model DAG: one T1 training per (method, seed), one
T2 training per candidate, measurements, outcomes, the four analyses and their figures."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from promptcl.prompts.candidates import training_ids
from promptcl.study.measures import MEASURES
from tests.helpers.workflow import SEQUENCE, snakemake

T1, T2 = SEQUENCE
BRANCH = f"study_{T1}_{T2}-inclora-s0"
PARENT = f"study_{T1}_{T2}-inclora-original-s0"


@pytest.fixture(scope="module")
def study(studied) -> Path:
    return studied


def _trained(work: Path) -> list[int]:
    return training_ids(pd.read_parquet(work / f"results/prompts/{T2}/candidates.parquet"))


def test_t1_is_trained_once_and_t2_once_per_candidate(study):
    ids = _trained(study)
    assert len(ids) >= 3
    stage_1 = sorted(p.parent.parent.name for p in study.glob("results/study_*/stage_1/adapter"))
    stage_2 = sorted(p.parent.parent.name for p in study.glob("results/study_*/stage_2/adapter"))
    assert stage_1 == [PARENT]
    cells = [PARENT] + [f"study_{T1}_{T2}-inclora-fixed_{c}-s0" for c in ids if c != 0]
    assert stage_2 == sorted(cells)
    logs = list(study.glob("results/logs/study_*/stage_*/train.log"))
    assert len(logs) == 1 + len(ids), "no training job ran twice or for a cell's T1"


def test_measurements_outcomes_and_analyses(study):
    ids = _trained(study)
    measures = pd.read_parquet(study / f"results/study/{BRANCH}/measures.parquet")
    assert list(measures["candidate_id"]) == ids
    assert set(MEASURES) <= set(measures.columns)
    assert measures[list(MEASURES)].notna().all().all()
    outcomes = pd.read_parquet(study / f"results/study/{BRANCH}/outcomes.parquet")
    assert set(outcomes["candidate_id"]) == set(ids)
    assert set(outcomes["role"]) == {"T1", "T2", "T2_trained", "unseen"}
    assert (outcomes.query("candidate_id == 0")["delta"] == 0).all()
    # an outcome is the cell's own R after stage 2
    cell = f"study_{T1}_{T2}-inclora-fixed_{ids[1]}-s0"
    matrix = pd.read_parquet(study / f"results/{cell}/metrics/accuracy_matrix.parquet")
    for metric in ("rougeL", "gold_logprob"):  # generation and likelihood outcomes alike
        want = matrix.query(
            f"protocol == 'original_prompt' and stage == 2 and task == '{T1}' "
            f"and metric == '{metric}'"
        )["score"].iloc[0]
        got = outcomes.query(f"candidate_id == {ids[1]} and role == 'T1' and metric == '{metric}'")
        assert got["score"].iloc[0] == pytest.approx(want)
    # the study's metric is the gold log-likelihood: its zero-shot measurement is -loss
    assert np.allclose(measures["zero_shot_score"], -measures["loss_instance_mean"], atol=1e-4)
    predictors = pd.read_parquet(study / "results/study/predictors.parquet")
    mean = predictors.query("scope == 'mean' and kind == 'spearman'")
    assert (mean["n"] == len(ids)).all() and (mean["branches"] == 1).all()
    for analysis in ("spread", "outcome_correlations", "predictors", "gradient_cosines"):
        table = pd.read_parquet(study / f"results/study/{analysis}.parquet")
        assert len(table), analysis
        assert (study / f"results/study/figures/{analysis}.png").stat().st_size > 10_000


def test_a_finished_study_has_nothing_left_to_do(study):
    proc = snakemake(study, "-n", "--configfile", str(study / "config.yaml"))
    assert "Nothing to be done" in proc.stdout + proc.stderr
