"""Bad input stops Snakemake before any job runs, with a message naming the key or file."""

from __future__ import annotations

import json

from tests.helpers.workflow import (
    fails_before_jobs,
    snakemake,
    tiny_config,
    write_config,
)


def test_unknown_key_is_named(tmp_path, tiny_model_dir):
    config = tiny_config(tiny_model_dir)
    config["training"]["learnig_rate"] = 0.1
    fails_before_jobs(tmp_path, config, "learnig_rate")


def test_wrong_type_is_named(tmp_path, tiny_model_dir):
    config = tiny_config(tiny_model_dir)
    config["lora"] = {"r": "eight"}
    fails_before_jobs(tmp_path, config, "eight")


def test_unknown_task_in_sequence_is_named(tmp_path, tiny_model_dir):
    config = tiny_config(tiny_model_dir, sequences={"tiny": {"tasks": ["task195", "task99999"]}})
    fails_before_jobs(tmp_path, config, "task99999")


def test_unknown_sequence_in_runs_is_named(tmp_path, tiny_model_dir):
    config = tiny_config(tiny_model_dir, runs={"sequences": ["nope"]})
    fails_before_jobs(tmp_path, config, "runs.sequences: unknown sequence 'nope'")


def test_missing_task_file_is_named(tmp_path, tiny_model_dir):
    root = tmp_path / "tasks"
    (root / "task1_broken").mkdir(parents=True)
    (root / "task1_broken" / "train.json").write_text('[{"sentence": "a", "label": "b"}]')
    (root / "task1_broken" / "instructions.json").write_text(
        '{"instruction": "i", "suffix": "", "labels": []}'
    )
    config = tiny_config(
        tiny_model_dir,
        data={"sources": [{"format": "sentence_label", "root": str(root)}]},
        sequences={"tiny": {"tasks": ["task1"]}},
    )
    fails_before_jobs(tmp_path, config, str(root / "task1_broken" / "test.json"))


def test_missing_pool_file_is_named(tmp_path, tiny_model_dir):
    config = tiny_config(tiny_model_dir)
    config["prompts"]["file"] = {"path": str(tmp_path / "pools/{task}.jsonl")}
    fails_before_jobs(tmp_path, config, str(tmp_path / "pools/task195.jsonl"))


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
        data={"sources": [{"format": "sentence_label", "root": str(root)}]},
        sequences={"tiny": {"tasks": ["task1"]}},
    )
    pool = [f"Give the label for this sentence, version {i}." for i in range(4)]
    (tmp_path / "pool.json").write_text(json.dumps(pool))  # enough for prompts.min_valid
    config["prompts"]["file"] = {"path": str(tmp_path / "pool.json")}
    cfg = write_config(tmp_path / "config.yaml", config)
    proc = snakemake(
        tmp_path, "results/tasks/task1/train.parquet", "--configfile", str(cfg), check=False
    )
    assert proc.returncode != 0
    log = (tmp_path / "results/logs/tasks/task1.log").read_text()
    assert "train.json" in log and "record 1" in log and "label" in log


def test_grad_accum_and_global_batch_size_conflict_is_named(tmp_path, tiny_model_dir):
    config = tiny_config(tiny_model_dir)
    config["training"].update(grad_accum=2, global_batch_size=8)
    fails_before_jobs(tmp_path, config, "training.grad_accum or training.global_batch_size")


def test_gguf_source_without_a_file_is_named(tmp_path, tiny_model_dir):
    config = tiny_config(tiny_model_dir)
    config["model"] = {"source": "gguf", "path": str(tmp_path / "missing.gguf")}
    fails_before_jobs(tmp_path, config, f"model.path: GGUF file {tmp_path / 'missing.gguf'}")


def test_missing_api_key_stops_before_any_job(tmp_path, tiny_model_dir, monkeypatch):
    monkeypatch.delenv("PROMPTCL_TEST_NO_SUCH_KEY", raising=False)
    config = tiny_config(tiny_model_dir)
    config["prompts"] = {
        "backend": "openai",
        "openai": {"base_url": "http://127.0.0.1:9/v1", "api_key_env": "PROMPTCL_TEST_NO_SUCH_KEY"},
    }
    fails_before_jobs(tmp_path, config, "PROMPTCL_TEST_NO_SUCH_KEY is not set")
