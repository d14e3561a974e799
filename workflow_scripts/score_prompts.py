"""Rules score_prompts(_base): pre-update loss of each valid candidate on one model state."""

import json

import pandas as pd

from promptcl.evaluate.scoring import ScoringStats, score_candidates
from promptcl.model.runtime import input_list, job_logging, load_job_state
from promptcl.prompts.candidates import training_texts
from promptcl.prompts.prompting import PromptFormat
from promptcl.prompts.scores import rank_columns
from promptcl.store.integrity import verify_inputs, write_parquet


def main(snakemake) -> None:
    params = snakemake.params
    with job_logging(snakemake.log[0], snakemake.threads) as log:
        verify_inputs(snakemake.input)
        model, tokenizer, precision = load_job_state(snakemake)
        adapters = input_list(snakemake.input.get("adapters", []))
        table = pd.read_parquet(snakemake.input.train).head(params.scoring["instances"])
        pairs = training_texts(pd.read_parquet(snakemake.input.candidates))
        stats = ScoringStats()
        scores = score_candidates(
            model,
            tokenizer,
            PromptFormat.from_config(params.prompt),
            table,
            pairs,
            params.scoring["batch_size"],
            precision,
            stats,
            params.scoring["reference_batch_size"],
        )
        scores = rank_columns(scores)
        scores["adapters"] = len(adapters)
        scores["seconds"] = round(stats.seconds, 4)
        write_parquet(scores, snakemake.output[0])
        log.info("\n%s", scores.to_string(index=False))
        log.info(
            "%s",
            json.dumps(
                {
                    "sequences": stats.sequences,
                    "tokens": stats.tokens,
                    "tokens_per_s": round(stats.tokens / max(stats.seconds, 1e-9), 1),
                }
            ),
        )


if __name__ == "__main__":
    main(snakemake)  # noqa: F821
