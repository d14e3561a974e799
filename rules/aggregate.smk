rule aggregate_run:
    """The run's accuracy matrix R (protocol × stage × task × metric) and its summary."""
    input:
        zero_shot=PLAN.zero_shot_predictions,
        stages=PLAN.stage_predictions,
        adapters=PLAN.run_adapters,
    output:
        matrix=paths.MATRIX,
        summary=paths.RUN_SUMMARY,
        text=paths.RUN_SUMMARY_TEXT,
    log:
        paths.log(paths.JOB_AGGREGATE),
    localrule: True
    conda:
        "../environment.yml"
    params:
        layout=PLAN.run_layout,
    script:
        "../workflow_scripts/aggregate_run.py"


rule summarize:
    """One table over all runs of the config: results/summary.parquet (+ a text rendering)."""
    input:
        unpack(PLAN.run_summaries),
    output:
        table=paths.SUMMARY,
        text=paths.SUMMARY_TEXT,
    log:
        paths.log(paths.JOB_SUMMARIZE),
    localrule: True
    conda:
        "../environment.yml"
    params:
        runs=list(PLAN.runs),
    script:
        "../workflow_scripts/summarize.py"
