rule aggregate_run:
    """The run's accuracy matrix R (protocol × stage × task × metric) and its summary."""
    input:
        unpack(PLAN.run_evaluations),
        adapters=PLAN.run_adapters,
    output:
        matrix=paths.MATRIX,
        summary=paths.RUN_SUMMARY,
        text=paths.RUN_SUMMARY_TEXT,
        instances=paths.INSTANCE_SCORES,
    log:
        paths.log(paths.JOB_AGGREGATE),
    localrule: True
    conda:
        "../environment.yml"
    params:
        layout=PLAN.run_layout,
    script:
        "../workflow_scripts/aggregate_run.py"


rule compare_runs:
    """Every configuration over its seeds (mean, SD, t interval) and against the baseline,
    paired across seeds (t-test) and within each seed (bootstrap over test instances).
    """
    input:
        unpack(PLAN.run_summaries),
        instances=PLAN.run_instances,
    output:
        seeds=paths.SEEDS,
        comparisons=paths.COMPARISONS,
        by_seed=paths.COMPARISONS_BY_SEED,
    log:
        paths.log(paths.JOB_COMPARE),
    benchmark:
        paths.benchmark(paths.JOB_COMPARE)
    localrule: True
    conda:
        "../environment.yml"
    params:
        layouts=PLAN.run_layouts(),
        comparison=PLAN.comparison_params(),
    script:
        "../workflow_scripts/compare_runs.py"


rule summarize:
    """One table over all runs of the config: results/summary.parquet (+ a text rendering)."""
    input:
        unpack(PLAN.run_summaries),
        seeds=paths.SEEDS,
        comparisons=paths.COMPARISONS,
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
        metrics=PLAN.compared_metrics,
    script:
        "../workflow_scripts/summarize.py"
