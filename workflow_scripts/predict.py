"""Rules evaluate_base and predict_stage: greedy predictions of one model state, scored.

Stage 0 (no adapters) writes one file; a stage k job writes <task>.parquet per evaluation task
into its output folder, loading the model once for all of them. Every task is evaluated under
every prompt of :func:`promptcl.evaluation.evaluation_prompts`.
"""

from promptcl.evaluation import evaluate_tasks, log_scores, trained_prompts
from promptcl.inference import GenerationSpec, GenerationStats, predict_table
from promptcl.metrics import metrics_of, score_predictions
from promptcl.prompting import PromptFormat
from promptcl.runtime import input_list, job_logging, load_job_state, task_output


def main(snakemake) -> None:
    params = snakemake.params
    with job_logging(snakemake.log[0], snakemake.threads) as log:
        model, tokenizer, precision = load_job_state(snakemake, merge=True)
        fmt = PromptFormat.from_config(params.prompt)
        gen = GenerationSpec.from_config(params.generation)
        stats = GenerationStats()

        def evaluate(task, table, prompt_id, instruction):
            return predict_table(
                model, tokenizer, table, fmt, gen, task, precision, stats, prompt_id, instruction
            )

        for task, preds in evaluate_tasks(
            params.tasks,
            input_list(snakemake.input.tables),
            input_list(snakemake.input.get("candidates", [])),
            trained_prompts(input_list(snakemake.input.get("trained", []))),
            evaluate,
        ):
            scored = score_predictions(preds)
            scored.to_parquet(task_output(snakemake, task), index=False)
            log_scores(log, task, scored, metrics_of(["generation"]))
        log.info(
            "%d adapters, precision %s: %d prompt + %d generated tokens in %.1f s",
            len(input_list(snakemake.input.get("adapters", []))),
            precision,
            stats.prompt_tokens,
            stats.generated_tokens,
            stats.seconds,
        )


if __name__ == "__main__":
    main(snakemake)  # noqa: F821
