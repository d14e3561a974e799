"""Rule measure_candidates: pre-update measurements of T2's candidates on the state after T1."""

import json

import pandas as pd

from promptcl.dag.study_design import trained_candidates
from promptcl.evaluate.inference import GenerationSpec
from promptcl.model.runtime import job_logging, load_job_state
from promptcl.prompts.candidates import text_of
from promptcl.prompts.prompting import PromptFormat
from promptcl.store.integrity import verify_inputs, write_parquet
from promptcl.study.measures import MeasureSpec, measure_candidates


def main(snakemake) -> None:
    params = snakemake.params
    with job_logging(snakemake.log[0], snakemake.threads) as log:
        verify_inputs(snakemake.input)
        model, tokenizer, precision = load_job_state(snakemake)
        branch = params.branch
        t1_candidates = pd.read_parquet(snakemake.input.t1_candidates)
        t2_candidates = pd.read_parquet(snakemake.input.t2_candidates)
        ids = trained_candidates(t2_candidates, branch["max_candidates"])
        measures, gradients = measure_candidates(
            model,
            tokenizer,
            PromptFormat.from_config(params.prompt),
            pd.read_parquet(snakemake.input.t2_train),
            [(cid, text_of(t2_candidates, cid)) for cid in ids],
            pd.read_parquet(snakemake.input.t1_train),
            text_of(t1_candidates, 0),  # T1 was trained with its original prompt
            MeasureSpec(**params.measure),
            GenerationSpec.from_config(params.generation),
            precision,
            branch["t2"],
        )
        name = snakemake.wildcards.branch
        measures.insert(0, "branch", name)
        gradients.insert(0, "branch", name)
        write_parquet(measures, snakemake.output.measures)
        write_parquet(gradients, snakemake.output.gradients)
        log.info("\n%s", measures.drop(columns=["text"]).round(4).to_string(index=False))
        log.info("%s", json.dumps({"candidates": len(measures), "rows": len(gradients)}))


if __name__ == "__main__":
    main(snakemake)  # noqa: F821
