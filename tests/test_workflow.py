"""The whole Snakemake DAG on a tiny random model: artifacts, idempotence, config errors, lint."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
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
        "prompt": {"max_length": 256},
        "runs": {"sequences": ["tiny"]},
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
    cell = cells.query("stage == 1 and task == 'task195' and metric == 'rougeL'")
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


# --- the openai backend through the workflow: cache and secrecy ---------------------------------


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
