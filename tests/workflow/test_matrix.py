"""Prompt strategies on top of the methods, read from the every-method × every-strategy DAG
(``every_pair``, one held-out evaluation prompt per task): SAPO's argmin on the state each stage
starts from, the prompts each strategy records, the methods' adapters and logs, held-out
prompts and the run summaries."""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
import pytest
import torch

from promptcl.methods import METHODS
from promptcl.prompts.scores import CRITERIA
from tests.helpers.workflow import STRATEGIES, pair_run


def _info(work: Path, run: str, k: int) -> dict:
    return json.loads((work / f"results/{run}/stage_{k}/adapter/promptcl_stage.json").read_text())


def test_sapo_trains_with_the_argmin_of_the_state_it_starts_from(every_pair):
    results = every_pair / "results"
    base_scores = pd.read_parquet(results / "prompts/task195/scores_base.parquet")
    candidates = pd.read_parquet(results / "prompts/task195/candidates.parquet")
    assert candidates["heldout"].sum() == 1
    heldout_id = int(candidates.loc[candidates["heldout"], "candidate_id"].iloc[0])
    assert heldout_id not in set(base_scores["candidate_id"]), "held-out prompts are never scored"
    # stage 1 of every run starts from the base model: one shared scoring job
    host = pair_run("inclora", "sapo")
    assert not (results / host / "stage_1/prompt_scores.parquet").exists()
    chosen = _info(every_pair, host, 1)["prompt"]
    column = CRITERIA[chosen["criterion"]]
    best = int(base_scores.sort_values([column, "candidate_id"])["candidate_id"].iloc[0])
    assert chosen["candidate_id"] == best
    for method in ("inclora", "olora", "seqlora", "replay", "ewc", "lwf"):
        run = pair_run(method, "sapo")
        scores = pd.read_parquet(results / run / "stage_2/prompt_scores.parquet")
        assert (scores["adapters"] == 1).all()  # IncLoRA's frozen LoRA, or the continued one
        assert heldout_id not in set(scores["candidate_id"])
        stage2 = scores.sort_values([column, "candidate_id"])["candidate_id"].iloc[0]
        assert _info(every_pair, run, 2)["prompt"]["candidate_id"] == int(stage2)


def test_static_strategies_and_paft_record_their_prompts(every_pair):
    assert _info(every_pair, pair_run("inclora", "original"), 1)["prompt"]["candidate_id"] == 0
    assert _info(every_pair, pair_run("olora", "fixed:1"), 2)["prompt"]["candidate_id"] == 1
    # seqlora's stage 1 is IncLoRA's, in IncLoRA's folder
    assert not (every_pair / f"results/{pair_run('seqlora', 'paft')}/stage_1").exists()
    paft = _info(every_pair, pair_run("inclora", "paft"), 1)["prompt"]["candidate_ids"]
    candidates = pd.read_parquet(every_pair / "results/prompts/task195/candidates.parquet")
    trainable = candidates[candidates["valid"] & ~candidates["heldout"]]["candidate_id"]
    assert paft == sorted(int(i) for i in trainable)


def test_olora_logs_task_loss_and_penalty(every_pair):
    results = every_pair / "results"
    second = pd.read_parquet(results / pair_run("olora", "sapo") / "stage_2/train_log.parquet")
    assert (second["penalty"] > 0).all()
    assert second["task_loss"].to_numpy() == pytest.approx(
        (second["loss"] - second["penalty"]).to_numpy()
    )
    plain = pd.read_parquet(results / pair_run("inclora", "sapo") / "stage_2/train_log.parquet")
    assert "penalty" not in plain.columns


def test_seqlora_keeps_one_lora(every_pair):
    from safetensors.torch import load_file

    def weights(run: str, k: int) -> dict[str, torch.Tensor]:
        folder = every_pair / f"results/{run}/stage_{k}/adapter"
        return load_file(str(folder / "adapter_model.safetensors"))

    one = weights(pair_run("inclora", "paft"), 1)  # seqlora's stage 1 (shared)
    two = weights(pair_run("seqlora", "paft"), 2)
    assert one.keys() == two.keys()
    assert any(not torch.equal(one[k], two[k]) for k in one), "stage 2 continued training it"


def test_heldout_prompts_and_the_run_summary(every_pair):
    results = every_pair / "results"
    pred = pd.read_parquet(
        results / pair_run("inclora", "sapo") / "stage_2/predictions/task1343.parquet"
    )
    assert set(pred["prompt_id"]) == {"original", "heldout_1"}
    zero = pd.read_parquet(results / "zero_shot/predictions/task195.parquet")
    assert set(zero["prompt_id"]) == {"original"} | {"heldout_1"}
    summary = pd.read_parquet(results / "summary.parquet")
    runs = {pair_run(m, s): (m, s) for m in METHODS for s in STRATEGIES}
    assert set(summary["run"]) == set(runs), "hosts of a shared stage 1 get no row"
    assert len(summary) == len(runs) * 3 * 2  # metrics × protocols
    for run, (method, strategy) in runs.items():
        rows = summary[(summary["run"] == run) & (summary["metric"] == "rougeL")]
        assert list(rows["protocol"]) == ["original_prompt", "trained_prompt"]
        row = rows.iloc[0]
        assert row["method"] == method and row["strategy"] == strategy
        assert row["prompts"] == 2 and row["robust_std"] >= 0
