"""Rules likelihood_base and likelihood_stage: the gold answer's log-likelihood and rank
classification under one model state (:mod:`promptcl.evaluate.likelihood`), for the same tasks,
prompts
and items as the generation rules (``evaluation.outcomes`` decides which of the two run).

Stage 0 (no adapters) writes one file; a stage k job writes <task>.parquet per evaluation task
into its output folder, loading the model once for all of them.
"""

from promptcl.analysis.metrics import metrics_of
from promptcl.evaluate.evaluation import evaluate_tasks, log_scores, trained_prompts
from promptcl.evaluate.likelihood import LikelihoodStats, likelihood_table
from promptcl.model.runtime import input_list, job_logging, load_job_state, task_outputs
from promptcl.prompts.prompting import PromptFormat
from promptcl.store.integrity import verify_inputs


def main(snakemake) -> None:
    params = snakemake.params
    with job_logging(snakemake.log[0], snakemake.threads) as log, task_outputs(snakemake) as out:
        verify_inputs(snakemake.input)
        model, tokenizer, precision = load_job_state(snakemake, merge=True)
        fmt = PromptFormat.from_config(params.prompt)
        stats = LikelihoodStats()

        def evaluate(task, table, prompt_id, instruction):
            return likelihood_table(
                model, tokenizer, table, fmt, precision, stats, prompt_id, instruction,
                params.batch_size,
            )  # fmt: skip

        for task, table in evaluate_tasks(
            params.tasks,
            input_list(snakemake.input.tables),
            input_list(snakemake.input.get("candidates", [])),
            trained_prompts(input_list(snakemake.input.get("trained", []))),
            evaluate,
        ):
            out(task, table)
            log_scores(log, task, table, metrics_of(["likelihood"]))
        log.info(
            "%d adapters, precision %s: %d sequences, %d tokens in %.1f s",
            len(input_list(snakemake.input.get("adapters", []))),
            precision,
            stats.sequences,
            stats.tokens,
            stats.seconds,
        )


if __name__ == "__main__":
    main(snakemake)  # noqa: F821
