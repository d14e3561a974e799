"""Rule train_stage: train stage k's LoRA over the frozen earlier stages and save it."""

import json
import shutil
from pathlib import Path

import pandas as pd

from promptcl.modeling import adapter_name, load_tokenizer, resolve_precision
from promptcl.prompting import PromptFormat
from promptcl.runtime import job_logging
from promptcl.strategies import training_instruction
from promptcl.training import (
    LoraSpec,
    TrainSpec,
    build_stage_model,
    encode_table,
    save_adapter,
    train_stage,
)

METHODS = ("inclora",)


def as_list(value) -> list[str]:
    return [value] if isinstance(value, str) else list(value)


def main(snakemake) -> None:
    params = snakemake.params
    with job_logging(snakemake.log[0], snakemake.threads) as log:
        run = params.stage
        if run["method"] not in METHODS:
            raise ValueError(f"runs.methods: method '{run['method']}' is not implemented")
        stage = int(snakemake.wildcards.stage)
        precision = resolve_precision(params.model["precision"])
        trust = params.model["trust_remote_code"]
        model_dir = Path(snakemake.input.model)
        previous = [Path(p) for p in as_list(snakemake.input.previous)]
        spec = TrainSpec.from_config(dict(params.training), seed=run["seed"], precision=precision)
        model = build_stage_model(
            model_dir,
            previous,
            LoraSpec.from_config(params.lora),
            stage,
            precision,
            trust,
            run["seed"],
        )
        tokenizer = load_tokenizer(model_dir, trust)
        table = pd.read_parquet(snakemake.input.train)
        fmt = PromptFormat.from_config(params.prompt)
        candidates = pd.read_parquet(snakemake.input.candidates)
        cid, instruction = training_instruction(candidates, run["strategy"])
        log.info("training prompt: candidate %d (%s): %s", cid, run["strategy"], instruction)
        examples = encode_table(
            tokenizer, fmt, table, params.prompt["max_length"], [instruction] * len(table)
        )
        log.info(
            "stage %d of %s: task %s, %d examples", stage, run["run"], params.task, len(examples)
        )
        state_dir = Path(params.state_dir)
        result = train_stage(model, tokenizer, examples, spec, state_dir)
        out = Path(snakemake.output.adapter)
        save_adapter(model, adapter_name(stage), out, str(model_dir.resolve()))
        info = {**result.info, "run": run["run"], "stage": stage, "task": params.task}
        info["prompt"] = {
            "strategy": run["strategy"],
            "candidate_id": cid,
            "instruction": instruction,
        }
        (out / "promptcl_stage.json").write_text(json.dumps(info, indent=2, default=str) + "\n")
        result.log.to_parquet(snakemake.output.train_log, index=False)
        shutil.rmtree(state_dir, ignore_errors=True)
        log.info(
            "done: %s", json.dumps({k: info[k] for k in ("steps", "train_loss", "train_seconds")})
        )


if __name__ == "__main__":
    main(snakemake)  # noqa: F821
