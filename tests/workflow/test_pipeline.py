"""One tiny-model run through the whole DAG: every artifact, idempotence, what a changed
parameter reruns."""

from __future__ import annotations

import json

import pandas as pd
import pytest
import yaml
from peft import PeftModel

from promptcl.model.modeling import load_base_model
from tests.helpers.workflow import (
    RUN,
    SEQUENCE,
    UNSEEN,
    planned_jobs,
    snakemake,
    write_config,
)


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


def test_changed_training_param_reruns_only_training_and_after(finished):
    cfg = yaml.safe_load((finished / "config.yaml").read_text())
    cfg["training"]["learning_rate"] = 0.02
    path = write_config(finished / "config_lr.yaml", cfg)
    proc = snakemake(finished, "--configfile", str(path), "--dry-run")
    jobs = planned_jobs(proc.stdout + proc.stderr)
    assert jobs.pop("total") == 12
    assert jobs == {
        "train_stage": 2,
        "predict_stage": 2,
        "aggregate_run": 1,
        "compare_runs": 1,
        "summarize": 1,
        "plot_run": 1,
        "plot_runs": 3,
        "all": 1,
    }
