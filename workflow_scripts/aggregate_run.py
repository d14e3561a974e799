"""Rule aggregate_run: accuracy matrix and continual-learning summary of one run."""

from promptcl.analysis.run_metrics import aggregate_run, read_evaluations, read_stage_records
from promptcl.model.runtime import input_list, job_logging
from promptcl.store.integrity import verify_inputs, write_parquet, write_text
from promptcl.tracking import track_run_metrics


def main(snakemake) -> None:
    layout = snakemake.params.layout
    inputs = snakemake.input
    with job_logging(snakemake.log[0]) as log:
        verify_inputs(inputs)
        generation = likelihood = None
        if "zero_shot" in inputs.keys():
            generation = read_evaluations(
                layout, input_list(inputs.zero_shot), input_list(inputs.stages)
            )
        if "zero_shot_likelihood" in inputs.keys():
            likelihood = read_evaluations(
                layout,
                input_list(inputs.zero_shot_likelihood),
                input_list(inputs.stage_likelihood),
            )
        records = read_stage_records(input_list(inputs.adapters))
        result = aggregate_run(snakemake.wildcards.run, layout, generation, likelihood, records)
        write_parquet(result.cells, snakemake.output.matrix)
        write_parquet(result.instances, snakemake.output.instances)
        write_parquet(result.summary, snakemake.output.summary)
        write_text(snakemake.output.text, result.text)
        log.info("\n%s", result.text)
        # config, not params: turning tracking on or off reruns nothing (docs/cluster.md)
        tracking, run = snakemake.config.get("tracking"), snakemake.wildcards.run
        track_run_metrics(tracking, run, result.cells, result.summary, result.text)


if __name__ == "__main__":
    main(snakemake)  # noqa: F821
