"""Generation and likelihood outcomes through the tiny-model DAG (the ``studied`` workflow runs
both): the likelihood tables, R with every metric, the paired comparisons with what they could
detect, the summary, ``promptcl show`` and ``promptcl power``."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pandas as pd
import pytest

from promptcl.analysis.metrics import REGISTRY
from tests.helpers import REPO
from tests.helpers.workflow import SEQUENCE, UNSEEN

METRICS = tuple(REGISTRY)

RUN = "tiny-inclora-sapo-s0"


def test_likelihood_tables_measure_the_rows_generation_measures(studied):
    for k in (1, 2):
        for task in SEQUENCE + UNSEEN:
            gen = pd.read_parquet(studied / f"results/{RUN}/stage_{k}/predictions/{task}.parquet")
            lik = pd.read_parquet(studied / f"results/{RUN}/stage_{k}/likelihood/{task}.parquet")
            keys = ["prompt_id", "id"]
            assert sorted(map(tuple, gen[keys].to_numpy())) == sorted(
                map(tuple, lik[keys].to_numpy())
            )
            assert (lik["gold_logprob"] <= 0).all() and (lik["gold_tokens"] >= 1).all()
            np.testing.assert_allclose(
                lik["gold_logprob"], lik["gold_logprob_sum"] / lik["gold_tokens"]
            )
            labelled = lik["labels"].map(len) > 0
            assert lik.loc[labelled, "rank_accuracy"].isin([0.0, 100.0]).all()
            assert lik.loc[~labelled, "rank_accuracy"].isna().all()
    zero = pd.read_parquet(studied / f"results/zero_shot/likelihood/{SEQUENCE[0]}.parquet")
    assert set(zero["prompt_id"]) == {"original"}


def test_r_and_the_instance_scores_carry_every_metric(studied):
    cells = pd.read_parquet(studied / f"results/{RUN}/metrics/accuracy_matrix.parquet")
    assert set(cells["metric"]) == set(METRICS)
    lik = pd.read_parquet(studied / f"results/{RUN}/stage_2/likelihood/{SEQUENCE[0]}.parquet")
    cell = cells.query(
        f"protocol == 'original_prompt' and stage == 2 and task == '{SEQUENCE[0]}' "
        "and metric == 'gold_logprob'"
    )
    original = lik[lik["prompt_id"] == "original"]
    assert cell["score"].item() == pytest.approx(original["gold_logprob"].mean())
    assert np.isnan(cell["majority_rate"].item())  # a log-likelihood has no chance level
    instances = pd.read_parquet(studied / f"results/{RUN}/metrics/instance_scores.parquet")
    assert set(METRICS) <= set(instances.columns)
    summary = pd.read_parquet(studied / "results/summary.parquet")
    assert set(summary["metric"]) == set(METRICS)


def test_comparisons_state_what_they_could_detect(studied):
    by_seed = pd.read_parquet(studied / "results/comparisons_by_seed.parquet")
    assert set(by_seed["metric"]) == {"rougeL", "label_accuracy", "gold_logprob", "rank_accuracy"}
    # a measure the two runs share exactly (e.g. a row of R before they differ) tests nothing
    assert (by_seed["mde"].dropna() > 0).all()
    # the tiny model's greedy answers are alike in both runs; its likelihoods are not
    assert by_seed.query("metric == 'gold_logprob'")["mde"].notna().any()
    text = (studied / "results/summary.txt").read_text()
    assert "All runs (gold_logprob)" in text
    if (by_seed["verdict"] == "within noise").any():
        assert "within noise (could detect ≥" in text


def test_show_and_power_read_the_likelihood_metrics(studied):
    matrix = studied / f"results/{RUN}/metrics/accuracy_matrix.parquet"
    shown = subprocess.run(
        [sys.executable, "-m", "promptcl", "show", str(matrix)],
        capture_output=True,
        text=True,
        cwd=REPO / "workflow_scripts",
        check=True,
    ).stdout
    assert "R[stage, task] for gold_logprob, nats per token" in shown
    power = subprocess.run(
        [sys.executable, "-m", "promptcl", "power", str(studied / "results")],
        capture_output=True,
        text=True,
        cwd=REPO / "workflow_scripts",
        check=True,
    ).stdout
    assert "paired_item_sd" in power and "gold_logprob" in power and RUN in power
