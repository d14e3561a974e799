rule evaluate_base:
    """Stage 0: zero-shot predictions of the base model with the task's original prompt.

    Shared by every run that evaluates the task."""
    input:
        model=MODEL_DIR,
        tables=f"{RESULTS}/tasks/{{task}}/test.parquet",
        candidates=heldout_pool_of_task,
    output:
        f"{RESULTS}/zero_shot/predictions/{{task}}.parquet",
    log:
        f"{RESULTS}/logs/zero_shot/predictions/{{task}}.log",
    benchmark:
        f"{RESULTS}/benchmarks/zero_shot/predictions/{{task}}.tsv"
    conda:
        "../environment.yml"
    threads: config["compute"]["threads"]
    params:
        tasks=single_task,
        model=model_params(),
        prompt=config["prompt"],
        generation=config["generation"],
    script:
        "../workflow_scripts/predict.py"


rule predict_stage:
    """Predictions on every evaluation task of a run after stage k (one model load)."""
    input:
        model=MODEL_DIR,
        adapters=adapters_upto,
        trained=stages_upto,
        tables=run_test_tables,
        candidates=heldout_pools_of_run,
    output:
        directory(f"{RESULTS}/{{run}}/stage_{{stage}}/predictions"),
    log:
        f"{RESULTS}/logs/{{run}}/stage_{{stage}}/predictions.log",
    benchmark:
        f"{RESULTS}/benchmarks/{{run}}/stage_{{stage}}/predictions.tsv"
    conda:
        "../environment.yml"
    threads: config["compute"]["threads"]
    params:
        tasks=run_eval_tasks,
        model=model_params(),
        prompt=config["prompt"],
        generation=config["generation"],
    script:
        "../workflow_scripts/predict.py"
