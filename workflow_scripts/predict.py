"""Rules evaluate_base and predict_stage: greedy predictions of one model state, scored.

Stage 0 (no adapters) writes one file; a stage k job writes <task>.parquet per evaluation task
into its output folder. Every task is evaluated under every prompt of
:func:`promptcl.evaluate.evaluation.evaluation_prompts`, by this job's model
(``generation.engine: hf``, loaded once) or by one vLLM engine for all of the job's prompts
(``vllm``).
"""

from promptcl.analysis.metrics import metrics_of, score_predictions
from promptcl.evaluate.evaluation import PredictJob, log_scores, predict_tasks, trained_prompts
from promptcl.evaluate.inference import GenerationSpec
from promptcl.model.runtime import input_list, job_logging, task_outputs
from promptcl.prompts.prompting import PromptFormat
from promptcl.store.integrity import verify_inputs


def main(snakemake) -> None:
    params = snakemake.params
    with job_logging(snakemake.log[0], snakemake.threads) as log:
        verify_inputs(snakemake.input)
        job = PredictJob(
            tasks=params.tasks,
            tables=input_list(snakemake.input.tables),
            pools=input_list(snakemake.input.get("candidates", [])),
            trained=trained_prompts(input_list(snakemake.input.get("trained", []))),
            fmt=PromptFormat.from_config(params.prompt),
            gen=GenerationSpec.from_config(params.generation),
            generation=params.generation,
            model_options=params.model,
            model_dir=snakemake.input.model,
            adapters=input_list(snakemake.input.get("adapters", [])),
            threads=snakemake.threads,
        )
        predictions = predict_tasks(job, log)
        with task_outputs(snakemake) as out:
            for task, preds in predictions.items():
                scored = score_predictions(preds)
                out(task, scored)
                log_scores(log, task, scored, metrics_of(["generation"]))


if __name__ == "__main__":
    main(snakemake)  # noqa: F821
