"""Methods × prompt strategies through the tiny-model DAG (shared stages computed once)."""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
import pytest
import torch

from tests.helpers.workflow import (
    SEQUENCE,
    snakemake,
    tiny_config,
    write_config,
)

MATRIX_RUNS = {
    "m-inclora-original-s0": ("inclora", "original"),
    "m-inclora-sapo-s0": ("inclora", "sapo"),
    "m-olora-sapo-s0": ("olora", "sapo"),
    "m-seqlora-paft-s0": ("seqlora", "paft"),
    "m-inclora-fixed_2-s0": ("inclora", "fixed:2"),
}


@pytest.fixture(scope="module")
def matrix(tiny_model_dir, tmp_path_factory) -> Path:
    work = tmp_path_factory.mktemp("matrix")
    config = tiny_config(
        tiny_model_dir, sequences={"m": {"tasks": SEQUENCE, "unseen": ["task1343"]}}
    )
    config["runs"] = {
        "sequences": ["m"],
        "methods": ["inclora"],
        "prompt_strategies": ["original", "sapo"],
        "seeds": [0],
        "extra": [
            {"sequence": "m", "method": m, "prompt_strategy": s, "seed": 0}
            for m, s in (("olora", "sapo"), ("seqlora", "paft"), ("inclora", "fixed:2"))
        ],
    }
    config["scoring"] = {"instances": 6, "batch_size": 8}
    config["evaluation"] = {"heldout_prompts": 1}
    config["olora"] = {"lambda1": 0.5, "lambda2": 0.0}
    cfg = write_config(work / "config.yaml", config)
    snakemake(work, "--configfile", str(cfg))
    return work


def _info(work: Path, run: str, k: int) -> dict:
    return json.loads((work / f"results/{run}/stage_{k}/adapter/promptcl_stage.json").read_text())


def test_sapo_trains_with_the_argmin_of_the_state_it_starts_from(matrix):
    base_scores = pd.read_parquet(matrix / "results/prompts/task195/scores_base.parquet")
    candidates = pd.read_parquet(matrix / "results/prompts/task195/candidates.parquet")
    assert candidates["heldout"].sum() == 1
    heldout_id = int(candidates.loc[candidates["heldout"], "candidate_id"].iloc[0])
    assert heldout_id not in set(base_scores["candidate_id"]), "held-out prompts are never scored"
    best = int(base_scores.sort_values(["mean_token_loss", "candidate_id"])["candidate_id"].iloc[0])
    # stage 1 of every run starts from the base model: one shared scoring job
    assert not (matrix / "results/m-inclora-sapo-s0/stage_1/prompt_scores.parquet").exists()
    assert _info(matrix, "m-inclora-sapo-s0", 1)["prompt"]["candidate_id"] == best
    for run in ("m-inclora-sapo-s0", "m-olora-sapo-s0"):
        scores = pd.read_parquet(matrix / f"results/{run}/stage_2/prompt_scores.parquet")
        assert (scores["adapters"] == 1).all()
        stage2 = scores.sort_values(["mean_token_loss", "candidate_id"])["candidate_id"].iloc[0]
        assert _info(matrix, run, 2)["prompt"]["candidate_id"] == int(stage2)
    # O-LoRA's penalty is zero at stage 1 (no earlier LoRA, lambda2 = 0): it trains what IncLoRA's
    # stage 1 trains, so it is IncLoRA's, trained once (tests/workflow/test_baselines.py checks
    # the adapters were bitwise equal when each run trained its own)
    assert not (matrix / "results/m-olora-sapo-s0/stage_1").exists()


def test_static_strategies_and_paft_record_their_prompts(matrix):
    assert _info(matrix, "m-inclora-original-s0", 1)["prompt"]["candidate_id"] == 0
    assert _info(matrix, "m-inclora-fixed_2-s0", 2)["prompt"]["candidate_id"] == 2
    # seqlora's stage 1 is IncLoRA's: its run hosts it, though inclora × paft is not configured
    assert not (matrix / "results/m-seqlora-paft-s0/stage_1").exists()
    paft = _info(matrix, "m-inclora-paft-s0", 1)["prompt"]["candidate_ids"]
    candidates = pd.read_parquet(matrix / "results/prompts/task195/candidates.parquet")
    trainable = candidates[candidates["valid"] & ~candidates["heldout"]]["candidate_id"]
    assert paft == sorted(int(i) for i in trainable)


def test_olora_logs_task_loss_and_penalty(matrix):
    second = pd.read_parquet(matrix / "results/m-olora-sapo-s0/stage_2/train_log.parquet")
    assert (second["penalty"] > 0).all()
    assert second["task_loss"].to_numpy() == pytest.approx(
        (second["loss"] - second["penalty"]).to_numpy()
    )
    plain = pd.read_parquet(matrix / "results/m-inclora-sapo-s0/stage_2/train_log.parquet")
    assert "penalty" not in plain.columns


def test_seqlora_keeps_one_lora(matrix):
    from safetensors.torch import load_file

    one = load_file(
        str(matrix / "results/m-inclora-paft-s0/stage_1/adapter/adapter_model.safetensors")
    )
    two = load_file(
        str(matrix / "results/m-seqlora-paft-s0/stage_2/adapter/adapter_model.safetensors")
    )
    assert one.keys() == two.keys()
    assert any(not torch.equal(one[k], two[k]) for k in one), "stage 2 continued training it"


def test_heldout_prompts_and_the_run_summary(matrix):
    pred = pd.read_parquet(
        matrix / "results/m-inclora-sapo-s0/stage_2/predictions/task1343.parquet"
    )
    assert set(pred["prompt_id"]) == {"original", "heldout_1"}
    zero = pd.read_parquet(matrix / "results/zero_shot/predictions/task195.parquet")
    assert set(zero["prompt_id"]) == {"original"} | {"heldout_1"}
    summary = pd.read_parquet(matrix / "results/summary.parquet")
    assert set(summary["run"]) == set(MATRIX_RUNS)
    assert len(summary) == len(MATRIX_RUNS) * 3 * 2  # metrics × protocols
    for run, (method, strategy) in MATRIX_RUNS.items():
        rows = summary[(summary["run"] == run) & (summary["metric"] == "rougeL")]
        assert list(rows["protocol"]) == ["original_prompt", "trained_prompt"]
        row = rows.iloc[0]
        assert row["method"] == method and row["strategy"] == strategy
        assert row["prompts"] == 2 and row["robust_std"] >= 0
        assert row["train_seconds"] > 0
        assert (row["scoring_seconds"] > 0) == (strategy == "sapo")
    cells = pd.read_parquet(matrix / "results/m-inclora-sapo-s0/metrics/accuracy_matrix.parquet")
    assert (cells["n"] == 8).all(), "R uses one prompt per cell, never the held-out ones"
    text = (matrix / "results/summary.txt").read_text()
    assert "Against inclora/original (rougeL), paired" in text
    comparisons = pd.read_parquet(matrix / "results/comparisons.parquet")
    compared = set(zip(comparisons["method"], comparisons["strategy"], strict=True))
    assert compared == {ms for ms in MATRIX_RUNS.values() if ms != ("inclora", "original")}


def test_matrix_second_call_has_nothing_to_do(matrix):
    proc = snakemake(matrix, "--configfile", str(matrix / "config.yaml"), "--dry-run")
    assert "Nothing to be done" in proc.stdout + proc.stderr, proc.stdout[-2000:]


def test_trained_prompt_protocol_evaluates_seen_tasks_with_their_training_prompt(matrix):
    """fixed:2 trains every stage with candidate 2: the trained-prompt R evaluates each seen
    task with it, the original-prompt R with the original; unseen and future tasks alike."""
    run = "m-inclora-fixed_2-s0"
    assert _info(matrix, run, 1)["evaluation_prompt"]["candidate_id"] == 2
    cells = pd.read_parquet(matrix / f"results/{run}/metrics/accuracy_matrix.parquet")
    assert list(cells.columns[:2]) == ["run", "protocol"]
    for stage in (1, 2):
        pred = pd.read_parquet(matrix / f"results/{run}/stage_{stage}/predictions/task195.parquet")
        trained = pred[pred["prompt_id"] == "trained"]
        assert len(trained) == 8 and "raw_prediction" in pred.columns
        cell = cells.query(
            "protocol == 'trained_prompt' and stage == @stage and task == 'task195' "
            "and metric == 'rougeL'"
        )
        assert cell["score"].item() == pytest.approx(trained["rougeL"].mean())
    stage1 = pd.read_parquet(matrix / f"results/{run}/stage_1/predictions/task363.parquet")
    assert "trained" not in set(stage1["prompt_id"]), "task363 is not trained before stage 2"
    unseen = pd.read_parquet(matrix / f"results/{run}/stage_2/predictions/task1343.parquet")
    assert "trained" not in set(unseen["prompt_id"])
    both = cells.pivot_table(index=["stage", "task", "metric"], columns="protocol", values="score")
    same = both.query("task != 'task195' and task != 'task363' or stage == 0")
    assert (same["original_prompt"] == same["trained_prompt"]).all()
    # original-strategy runs: the two protocols give the same R
    plain = pd.read_parquet(
        matrix / "results/m-inclora-original-s0/metrics/accuracy_matrix.parquet"
    ).pivot_table(index=["stage", "task", "metric"], columns="protocol", values="score")
    assert plain["original_prompt"].equals(plain["trained_prompt"])


def test_stage_record_has_the_launch_batching(matrix):
    info = _info(matrix, "m-inclora-original-s0", 1)
    assert info["batching"] == {
        "processes": 1,
        "micro_batch": 4,
        "grad_accum": 1,
        "effective_batch": 4,
    }
