"""Training one stage on the tiny model: the settings and data the training tests share."""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd

from promptcl.methods import build_stage_model
from promptcl.model.adapters import save_adapter
from promptcl.model.modeling import adapter_name
from promptcl.prompts.candidates import make_table
from promptcl.prompts.prompting import PromptFormat
from promptcl.store import paths
from promptcl.train.data import encode_table
from promptcl.train.specs import LoraSpec, TrainSpec, schema_defaults
from promptcl.train.trainer import fit

FMT = PromptFormat()
LORA = LoraSpec(r=4, alpha=16, dropout=0.0, target_modules=("q_proj", "v_proj"))


def table(n: int, label: str) -> pd.DataFrame:
    return pd.DataFrame(
        {
            "id": [f"x{i}" for i in range(n)],
            "input": [f"sentence number {i} about things" for i in range(n)],
            "references": [[label]] * n,
            "instruction": ["Say the label."] * n,
            "suffix": ["Answer yes or no."] * n,
            "labels": [["yes", "no"]] * n,
        }
    )


def training(**kw) -> dict:
    """The schema's ``training`` section without its launch keys, with ``kw`` over it."""
    from promptcl.train.job import LAUNCH_KEYS

    defaults = {k: v for k, v in schema_defaults("training").items() if k not in LAUNCH_KEYS}
    return {**defaults, **kw}


def spec(**kw) -> TrainSpec:
    """The schema's training settings with the tests' short stage (``kw`` over both)."""
    base = dict(epochs=1, learning_rate=5e-3, batch_size=4, save_steps=2, logging_steps=1)
    return TrainSpec.from_config(training(**{**base, **kw}), seed=0, precision="fp32")


def train(model_dir, tokenizer, prev, stage, out_root: Path, label: str, **kw) -> Path:
    """Train stage ``stage`` (IncLoRA over ``prev``) on 8 examples answering ``label``."""
    model = build_stage_model(model_dir, prev, LORA, stage)
    examples = encode_table(tokenizer, FMT, table(8, label))
    result = fit(model, tokenizer, examples, spec(**kw), out_root / f"state{stage}")
    out = out_root / f"adapter{stage}"
    save_adapter(model, adapter_name(stage), out, str(model_dir))
    (out_root / f"log{stage}.json").write_text(json.dumps(result.info, default=str))
    return out


def stage_job(root: Path, model_dir: Path, method: str = "inclora", options: dict | None = None):
    """Stage 1 of a run of ``method`` as the train_stage rule gives it: 8 examples, the
    original prompt alone as candidate, the schema's LoRA and training defaults."""
    from promptcl.train.job import StageJob

    root.mkdir(parents=True, exist_ok=True)
    table(8, "yes").to_parquet(root / "train.parquet")
    make_table("Say the label.", [], [], "file", "").to_parquet(root / "c.parquet")
    return StageJob(
        stage=1,
        run={"run": f"r-{method}", "method": method, "strategy": "original", "seed": 0},
        task="t",
        model_dir=str(model_dir),
        train=str(root / "train.parquet"),
        candidates=str(root / "c.parquet"),
        adapter_out=str(root / "adapter"),
        train_log_out=str(root / "log.parquet"),
        state_dir=str(root / "state"),
        model={"precision": "fp32", "trust_remote_code": False},
        prompt={},
        lora=schema_defaults("lora"),
        training=schema_defaults("training"),
        options=options or {},
    )


def replay_companion(tmp_path: Path, task: str, stage: int, n: int, trained: int) -> dict:
    """An earlier task as the DAG hands it to a replaying stage (``role: replay``): ``n``
    training rows, three candidates, and a stage record saying it trained with ``trained``."""
    train = tmp_path / f"{task}_train.parquet"
    table(n, f"label-{task}").assign(id=[f"{task}-{i}" for i in range(n)]).to_parquet(train)
    pool = make_table("Say the label.", ["Name the label.", "Give the label."], [None, None],
                      "file", "")  # fmt: skip
    pool.to_parquet(tmp_path / f"{task}_candidates.parquet")
    record = tmp_path / f"{task}_adapter"
    record.mkdir()
    prompts = {task: {"candidate_id": trained, "instruction": "x"}}
    (record / paths.STAGE_RECORD).write_text(
        json.dumps({"task": task, "evaluation_prompts": prompts})
    )
    return {
        "role": "replay",
        "task": task,
        "stage": stage,
        "train": str(train),
        "candidates": str(tmp_path / f"{task}_candidates.parquet"),
        "record": str(record),
    }
