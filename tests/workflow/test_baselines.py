"""Every method × every prompt strategy through the tiny-model DAG, the reference runs' DAG
shapes, and the comparisons over seeds the summary is built from."""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd

from promptcl.methods import METHODS
from tests.helpers.workflow import (
    SEQUENCE,
    STRATEGIES,
    methods_config,
    pair_run,
    planned_jobs,
    snakemake,
    write_config,
)

BASELINE = ("inclora", "original")


def _record(work: Path, run: str, k: int) -> dict:
    return json.loads((work / f"results/{run}/stage_{k}/adapter/promptcl_stage.json").read_text())


def test_every_method_runs_with_every_strategy(every_pair):
    summary = pd.read_parquet(every_pair / "results/summary.parquet")
    pairs = set(zip(summary["method"], summary["strategy"], strict=True))
    assert pairs == {(m, s) for m in METHODS for s in STRATEGIES}
    ap = summary[summary["metric"] == "rougeL"].set_index(["run", "protocol"])["AP"]
    assert ap.notna().all()  # every run's final row exists, including multitask's
    for method in METHODS:
        for strategy in STRATEGIES:
            record = _record(every_pair, pair_run(method, strategy), 2)
            assert record["method"] == method
            if strategy == "fixed:1":  # the strategy decides the current task's prompt
                assert record["prompt"]["candidate_id"] == 1


def test_replay_mixes_earlier_examples_with_the_prompt_they_trained_with(every_pair):
    run = pair_run("replay", "fixed:1")
    record = _record(every_pair, run, 2)
    (replayed,) = record["replayed"]
    assert replayed["task"] == SEQUENCE[0] and replayed["examples"] == 3
    assert replayed["candidate_id"] == 1  # stage 1 trained task 1 with candidate 1
    assert record["examples"] == 8 + 3
    # its stage 1 is IncLoRA's (nothing to replay yet): trained once, in IncLoRA's folder
    assert not (every_pair / f"results/{run}/stage_1").exists()
    assert "replayed" not in _record(every_pair, pair_run("inclora", "fixed:1"), 1)


def test_methods_that_start_as_inclora_share_its_first_stage(every_pair):
    """One stage-1 job (and one prediction job after it) per strategy for inclora, olora,
    seqlora, replay, agem and single; EWC (its Fisher), LwF (distils towards the base model),
    I-LoRA (its slow learner) and OSF (not a LoRA) train their own; the rows 1 of R of the
    sharing ones are the same cells."""
    results = every_pair / "results"
    sharing = {"inclora", "olora", "seqlora", "replay", "agem", "single"}
    owning = {"inclora", "ewc", "lwf", "ilora", "osf"}
    for strategy in STRATEGIES:
        host = pair_run("inclora", strategy)
        for method in METHODS:
            run = pair_run(method, strategy)
            owns = (results / run / "stage_1").exists()
            assert owns == (method in owning), run
            if method in sharing:
                row_1 = [
                    pd.read_parquet(results / r / "metrics/accuracy_matrix.parquet")
                    .query("stage == 1")
                    .drop(columns="run")
                    .reset_index(drop=True)
                    for r in (run, host)
                ]
                assert len(row_1[0]) > 0
                pd.testing.assert_frame_equal(*row_1)
        trained = (results / "benchmarks").glob(f"*-{strategy.replace(':', '_')}-s0/stage_1/")
        assert len(list(trained)) == len(owning)


def test_ewc_and_lwf_log_their_terms_apart_from_the_task_loss(every_pair):
    for method, column in (("ewc", "ewc"), ("lwf", "lwf")):
        log = pd.read_parquet(
            every_pair / f"results/{pair_run(method, 'original')}/stage_2/train_log.parquet"
        )
        assert {"task_loss", "penalty", column} <= set(log.columns)
        assert (log["loss"] - log["task_loss"] - log["penalty"]).abs().max() < 1e-6
    for k in (1, 2):
        adapter = every_pair / f"results/{pair_run('ewc', 'original')}/stage_{k}/adapter"
        assert (adapter / "ewc_fisher.safetensors").is_file()
        assert _record(every_pair, pair_run("ewc", "original"), k)["ewc"]["fisher_examples"] == 4


def test_agem_ilora_and_osf_leave_their_artifacts_in_the_workflow(every_pair):
    """A-GEM's memory and projection counts in the stage record; I-LoRA's slow learner beside
    each stage's adapter and its terms in the training log; OSF's PEFT folders, chained."""
    results = every_pair / "results"
    agem = _record(every_pair, pair_run("agem", "paft"), 2)["agem"]
    assert [(m["task"], m["examples"]) for m in agem["memory"]] == [(SEQUENCE[0], 3)]
    assert agem["steps"]["updates"] == _record(every_pair, pair_run("agem", "paft"), 2)["steps"]
    assert 0 <= agem["steps"]["projected"] <= agem["steps"]["updates"]
    ilora = pair_run("ilora", "sapo")
    for k in (1, 2):
        slow = results / ilora / f"stage_{k}/adapter/slow"
        assert (slow / "adapter_model.safetensors").is_file()
    log = pd.read_parquet(results / ilora / "stage_2/train_log.parquet")
    assert {"buffer_loss", "consistency"} <= set(log.columns)
    assert (log["loss"] - log["task_loss"] - log["penalty"]).abs().max() < 1e-6
    assert _record(every_pair, ilora, 2)["ilora"]["buffer"][0]["examples"] == 4
    osf = pair_run("osf", "original")
    for k in (1, 2):
        cfg = json.loads((results / osf / f"stage_{k}/adapter/adapter_config.json").read_text())
        assert cfg["peft_type"] == "OSF"
    assert _record(every_pair, osf, 2)["osf"]["loads_onto"].startswith(
        "the base model with stages [1]"
    )


def test_the_reference_runs_define_their_rows_of_r(every_pair):
    results = every_pair / "results"
    multitask = pair_run("multitask", "sapo")
    assert not (results / multitask / "stage_1").exists()
    record = _record(every_pair, multitask, 2)
    assert set(record["evaluation_prompts"]) == set(SEQUENCE)  # both tasks, jointly
    assert record["examples"] == 16
    cells = pd.read_parquet(results / multitask / "metrics/accuracy_matrix.parquet")
    assert sorted(set(cells["stage"])) == [0, 2]
    summary = pd.read_parquet(results / "summary.parquet").set_index(["run", "protocol", "metric"])
    row = summary.loc[(multitask, "original_prompt", "rougeL")]
    assert pd.notna(row["AP"]) and pd.isna(row["BWT"]) and pd.isna(row["plasticity"])
    single = pair_run("single", "sapo")
    assert not (results / single / "stage_2/prompt_scores.parquet").exists()  # scored on base
    assert pd.notna(summary.loc[(single, "original_prompt", "rougeL"), "plasticity"])


def test_each_configuration_is_compared_with_the_baseline_within_its_seed(every_pair):
    comparisons = pd.read_parquet(every_pair / "results/comparisons.parquet")
    by_seed = pd.read_parquet(every_pair / "results/comparisons_by_seed.parquet")
    configs = {(m, s) for m in METHODS for s in STRATEGIES} - {BASELINE}
    assert set(zip(comparisons["method"], comparisons["strategy"], strict=True)) == configs
    assert set(by_seed["baseline_run"]) == {pair_run(*BASELINE)}
    defined = comparisons["n"] >= 1  # multitask has no BWT, FWT, F, plasticity or ACC
    assert (comparisons.loc[defined, "basis"] == "paired bootstrap over instances (seed 0)").all()
    assert (comparisons.loc[~defined, "verdict"] == "n/a").all()
    assert set(comparisons["verdict"]) <= {"higher", "lower", "within noise", "n/a"}
    text = (every_pair / "results/summary.txt").read_text()
    assert "Against inclora/original" in text and "p_holm" in text


def test_the_reference_runs_dag_shapes(tiny_model_dir, tmp_path):
    config = methods_config(tiny_model_dir, ["single", "multitask"], ["original", "sapo"])
    cfg = write_config(tmp_path / "config.yaml", config)
    jobs = planned_jobs(snakemake(tmp_path, "--configfile", str(cfg), "-n").stdout)
    # single: both stages from the base model; multitask: the last stage only
    assert jobs["train_stage"] == 2 * 2 + 1 * 2
    assert jobs["predict_stage"] == 2 * 2 + 1 * 2
    assert "score_prompts" not in jobs  # every stage starts from the base: shared base scores
    assert jobs["score_prompts_base"] == len(SEQUENCE)


def test_two_seeds_are_paired_across_seeds(tiny_model_dir, tmp_path):
    config = methods_config(tiny_model_dir, ["inclora"], ["original", "fixed:1"], seeds=(0, 1))
    config["sequences"] = {"b": {"tasks": SEQUENCE[:1], "unseen": ["task1343"]}}
    cfg = write_config(tmp_path / "config.yaml", config)
    snakemake(tmp_path, "results/summary.txt", "--configfile", str(cfg))
    defined = ["AP", "plasticity", "ACC", "unseen_mean"]  # with T = 1, BWT, FWT and F are not
    seeds = pd.read_parquet(tmp_path / "results/seeds.parquet")
    assert set(seeds.loc[seeds["measure"].isin(defined), "n"]) == {2}
    assert set(seeds.loc[~seeds["measure"].isin(defined), "n"]) == {0}
    comparisons = pd.read_parquet(tmp_path / "results/comparisons.parquet")
    comparisons = comparisons[comparisons["measure"].isin(defined)]
    assert (comparisons["n"] == 2).all() and (comparisons["seeds"] == "0,1").all()
    # the t-test where the per-seed differences vary; where they are equal (the tiny model
    # often scores 0 everywhere) both seeds' bootstraps decide
    t_test = comparisons["p"].notna()
    assert (comparisons.loc[t_test, "basis"] == "paired t over seeds").all()
    both = "paired bootstrap over instances (each of 2 seeds)"
    assert (comparisons.loc[~t_test, "basis"] == both).all()
    by_seed = pd.read_parquet(tmp_path / "results/comparisons_by_seed.parquet")
    assert set(by_seed["seed"]) == {0, 1}
