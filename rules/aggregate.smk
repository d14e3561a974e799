rule aggregate_run:
    """The run's accuracy matrix R (stage × task × metric) and its continual-learning summary."""
    input:
        zero_shot=zero_shot_predictions,
        stages=stage_predictions,
        adapters=run_adapters,
    output:
        matrix=f"{RESULTS}/{{run}}/metrics/accuracy_matrix.parquet",
        summary=f"{RESULTS}/{{run}}/metrics/summary.parquet",
        text=f"{RESULTS}/{{run}}/metrics/summary.txt",
    log:
        f"{RESULTS}/logs/{{run}}/metrics/aggregate.log",
    localrule: True
    conda:
        "../environment.yml"
    params:
        layout=run_layout,
    script:
        "../workflow_scripts/aggregate_run.py"


rule summarize:
    """One table over all runs of the config: results/summary.parquet (+ a text rendering)."""
    input:
        run_summaries,
    output:
        table=f"{RESULTS}/summary.parquet",
        text=f"{RESULTS}/summary.txt",
    log:
        f"{RESULTS}/logs/summarize.log",
    localrule: True
    conda:
        "../environment.yml"
    params:
        runs=list(RUNS),
    script:
        "../workflow_scripts/summarize.py"
