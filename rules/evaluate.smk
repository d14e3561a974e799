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


rule combine_adapters:
    """The state after stage k as one LoRA (the stacked LoRAs of IncLoRA, O-LoRA, LwF concatenated
    along the rank, each stage's scaling folded in): what the vllm engine serves."""
    input:
        PLAN.state_after,
    output:
        directory(paths.COMBINED),
    log:
        paths.log(paths.JOB_COMBINE),
    localrule: True
    conda:
        "../environment.yml"
    script:
        "../workflow_scripts/combine_adapters.py"


rule predict_stage:
    """Predictions on every evaluation task of a run after stage k (one model load, or with
    generation.engine vllm one engine for all of the job's prompts)."""
    input:
        model=paths.MODEL_DIR,
        adapters=PLAN.generation_state,
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


rule likelihood_base:
    """Stage 0 by likelihood: the base model's log-likelihood of each gold answer and its rank
    classification, with the task's original and held-out prompts. Shared by every run.
    """
    input:
        model=paths.MODEL_DIR,
        tables=paths.fill(paths.TASK_SPLIT, task="{task}", split="test"),
        candidates=PLAN.heldout_pool_of_task,
    output:
        paths.ZERO_SHOT_LIKELIHOOD,
    log:
        paths.log(paths.JOB_ZERO_SHOT_LIKELIHOOD),
    benchmark:
        paths.benchmark(paths.JOB_ZERO_SHOT_LIKELIHOOD)
    conda:
        "../environment.yml"
    threads: config["compute"]["threads"]
    params:
        tasks=lambda wildcards: [wildcards.task],
        model=PLAN.model_params(),
        prompt=config["prompt"],
        batch_size=config["evaluation"]["batch_size"],
    script:
        "../workflow_scripts/likelihood.py"


rule likelihood_stage:
    """The state after stage k by likelihood, on every evaluation task of the run (one model
    load), with the same prompts as predict_stage."""
    input:
        model=paths.MODEL_DIR,
        adapters=PLAN.state_after,
        trained=PLAN.stage_records,
        tables=PLAN.run_test_tables,
        candidates=PLAN.heldout_pools_of_run,
    output:
        directory(paths.LIKELIHOOD),
    log:
        paths.log(paths.JOB_LIKELIHOOD),
    benchmark:
        paths.benchmark(paths.JOB_LIKELIHOOD)
    conda:
        "../environment.yml"
    threads: config["compute"]["threads"]
    params:
        tasks=PLAN.run_eval_tasks,
        model=PLAN.model_params(),
        prompt=config["prompt"],
        batch_size=config["evaluation"]["batch_size"],
    script:
        "../workflow_scripts/likelihood.py"
