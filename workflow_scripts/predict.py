"""Rules evaluate_base and predict_stage: greedy predictions of one model state, scored.

Stage 0 (no adapters) writes one file; a stage k job writes <task>.parquet per evaluation task
into its output folder, loading the model once for all of them. Every task is evaluated with its
original prompt and the held-out paraphrases; a task the run has trained with another prompt is
also evaluated with that prompt (``prompt_id`` "trained", the SAPO paper's protocol).
"""

import json
from pathlib import Path

import pandas as pd

from promptcl import paths
from promptcl.candidates import heldout_prompts
from promptcl.inference import GenerationSpec, GenerationStats, predict_table
from promptcl.metrics import score_predictions
from promptcl.prompting import PromptFormat
from promptcl.runtime import input_list, job_logging, load_job_state


def main(snakemake) -> None:
    params = snakemake.params
    with job_logging(snakemake.log[0], snakemake.threads) as log:
        model, tokenizer, precision = load_job_state(snakemake, merge=True)
        adapters = input_list(snakemake.input.get("adapters", []))
        fmt = PromptFormat.from_config(params.prompt)
        gen = GenerationSpec.from_config(params.generation)
        out = Path(snakemake.output[0])
        single = snakemake.rule == "evaluate_base"
        trained = trained_prompts(input_list(snakemake.input.get("trained", [])))
        if not single:
            out.mkdir(parents=True, exist_ok=True)
        stats = GenerationStats()
        tables = input_list(snakemake.input.tables)
        pools = input_list(snakemake.input.get("candidates", [])) or [None] * len(tables)
        for task, table_path, pool in zip(params.tasks, tables, pools, strict=True):
            table = pd.read_parquet(table_path)
            # the original prompt, then the held-out paraphrases no run trained on
            prompts = [("original", None)]
            if pool is not None:
                prompts += [(pid, text) for pid, _, text in heldout_prompts(pd.read_parquet(pool))]
            if task in trained:
                prompts.append(("trained", trained[task]))
            preds = pd.concat(
                [
                    predict_table(
                        model,
                        tokenizer,
                        table,
                        fmt,
                        gen,
                        task,
                        precision,
                        stats,
                        prompt_id=pid,
                        instruction=text,
                    )
                    for pid, text in prompts
                ],
                ignore_index=True,
            )
            scored = score_predictions(preds)
            scored.to_parquet(out if single else out / f"{task}.parquet", index=False)
            for pid, part in scored.groupby("prompt_id", sort=False):
                log.info(
                    "%s [%s]: n=%d rougeL=%.1f exact_match=%.1f label_accuracy=%.1f",
                    task,
                    pid,
                    len(part),
                    part["rougeL"].mean(),
                    part["exact_match"].mean(),
                    part["label_accuracy"].mean(),
                )
        log.info(
            "%d adapters, precision %s: %d prompt + %d generated tokens in %.1f s",
            len(adapters),
            precision,
            stats.prompt_tokens,
            stats.generated_tokens,
            stats.seconds,
        )


def trained_prompts(adapters: list[str]) -> dict[str, str]:
    """Task -> instruction, for the tasks of these stages that trained with a non-original
    prompt (from each adapter's stage record)."""
    out = {}
    for adapter in adapters:
        info = json.loads((Path(adapter) / paths.STAGE_RECORD).read_text())
        # every task the stage trained with the run's strategy (several for multitask)
        prompts = info.get("evaluation_prompts") or {info["task"]: info["evaluation_prompt"]}
        for task, prompt in prompts.items():
            if int(prompt["candidate_id"]) != 0:
                out[task] = prompt["instruction"]
    return out


if __name__ == "__main__":
    main(snakemake)  # noqa: F821
