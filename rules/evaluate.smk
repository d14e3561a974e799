rule evaluate_base:
    """Stage 0: zero-shot predictions of the base model with the task's original prompt.

    Shared by every run that evaluates the task."""
    input:
        model=paths.MODEL_DIR,
        tables=paths.fill(paths.TASK_SPLIT, task="{task}", split="test"),
        candidates=PLAN.heldout_pool_of_task,
    output:
        paths.ZERO_SHOT,
    log:
        paths.log(paths.JOB_ZERO_SHOT),
    benchmark:
        paths.benchmark(paths.JOB_ZERO_SHOT)
    conda:
        "../environment.yml"
    threads: config["compute"]["threads"]
    params:
        tasks=lambda wildcards: [wildcards.task],
        model=PLAN.model_params(),
        prompt=config["prompt"],
        generation=config["generation"],
    script:
        "../workflow_scripts/predict.py"


rule predict_stage:
    """Predictions on every evaluation task of a run after stage k (one model load)."""
    input:
        model=paths.MODEL_DIR,
        adapters=PLAN.state_after,
        trained=PLAN.stage_records,
        tables=PLAN.run_test_tables,
        candidates=PLAN.heldout_pools_of_run,
    output:
        directory(paths.PREDICTIONS),
    log:
        paths.log(paths.JOB_PREDICT),
    benchmark:
        paths.benchmark(paths.JOB_PREDICT)
    conda:
        "../environment.yml"
    threads: config["compute"]["threads"]
    params:
        tasks=PLAN.run_eval_tasks,
        model=PLAN.model_params(),
        prompt=config["prompt"],
        generation=config["generation"],
    script:
        "../workflow_scripts/predict.py"
