rule score_prompts_base:
    """Pre-update loss of every valid candidate of a task on the base model: the state stage 1
    of every run trains from, so it is computed once and shared."""
    input:
        model=paths.MODEL_DIR,
        train=paths.fill(paths.TASK_SPLIT, task="{task}", split="train"),
        candidates=paths.CANDIDATES,
    output:
        paths.BASE_SCORES,
    log:
        paths.log(paths.JOB_BASE_SCORES),
    benchmark:
        paths.benchmark(paths.JOB_BASE_SCORES)
    conda:
        "../environment.yml"
    threads: config["compute"]["threads"]
    params:
        model=PLAN.model_params(),
        prompt=config["prompt"],
        scoring=config["scoring"],
    script:
        "../workflow_scripts/score_prompts.py"


rule score_prompts:
    """Pre-update loss of every valid candidate of task k on the run's state after stage k-1."""
    input:
        model=paths.MODEL_DIR,
        adapters=PLAN.state_before,
        train=PLAN.stage_train_table,
        candidates=PLAN.stage_candidates,
    output:
        paths.STAGE_SCORES,
    log:
        paths.log(paths.JOB_STAGE_SCORES),
    benchmark:
        paths.benchmark(paths.JOB_STAGE_SCORES)
    wildcard_constraints:
        stage=r"[2-9]|[1-9][0-9]+",
    conda:
        "../environment.yml"
    threads: config["compute"]["threads"]
    params:
        model=PLAN.model_params(),
        prompt=config["prompt"],
        scoring=config["scoring"],
    script:
        "../workflow_scripts/score_prompts.py"
