"""Rules evaluate_base and predict_stage: greedy predictions of one model state, scored.

Stage 0 (no adapters) writes one file; a stage k job writes <task>.parquet per evaluation task
into its output folder, loading the model once for all of them.
"""

from pathlib import Path

import pandas as pd

from promptcl.inference import GenerationSpec, GenerationStats, predict_table
from promptcl.metrics import score_predictions
from promptcl.modeling import default_device, load_state, load_tokenizer, resolve_precision
from promptcl.prompting import PromptFormat
from promptcl.runtime import job_logging


def as_list(value) -> list[str]:
    return [value] if isinstance(value, str) else list(value)


def main(snakemake) -> None:
    params = snakemake.params
    with job_logging(snakemake.log[0], snakemake.threads) as log:
        precision = resolve_precision(params.model["precision"])
        model_dir = Path(snakemake.input.model)
        adapters = [Path(a) for a in as_list(snakemake.input.get("adapters", []))]
        model = load_state(model_dir, adapters, precision, params.model["trust_remote_code"])
        model.to(default_device())
        tokenizer = load_tokenizer(model_dir, params.model["trust_remote_code"])
        fmt = PromptFormat.from_config(params.prompt)
        gen = GenerationSpec.from_config(params.generation)
        out = Path(snakemake.output[0])
        single = out.suffix == ".parquet"
        if not single:
            out.mkdir(parents=True, exist_ok=True)
        stats = GenerationStats()
        tables = as_list(snakemake.input.tables)
        for task, table_path in zip(params.tasks, tables, strict=True):
            table = pd.read_parquet(table_path)
            preds = predict_table(
                model,
                tokenizer,
                table,
                fmt,
                params.prompt["max_length"],
                gen,
                task,
                precision,
                stats,
            )
            scored = score_predictions(preds)
            scored.to_parquet(out if single else out / f"{task}.parquet", index=False)
            log.info(
                "%s: n=%d rougeL=%.1f exact_match=%.1f label_accuracy=%.1f",
                task,
                len(scored),
                scored["rougeL"].mean(),
                scored["exact_match"].mean(),
                scored["label_accuracy"].mean(),
            )
        log.info(
            "%d adapters, precision %s: %d prompt + %d generated tokens in %.1f s",
            len(adapters),
            precision,
            stats.prompt_tokens,
            stats.generated_tokens,
            stats.seconds,
        )


if __name__ == "__main__":
    main(snakemake)  # noqa: F821
