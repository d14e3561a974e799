rule score_prompts_base:
    """Pre-update loss of every valid candidate of a task on the base model: the state stage 1
    of every run trains from, so it is computed once and shared."""
    input:
        model=MODEL_DIR,
        train=f"{RESULTS}/tasks/{{task}}/train.parquet",
        candidates=f"{RESULTS}/prompts/{{task}}/candidates.parquet",
    output:
        f"{RESULTS}/prompts/{{task}}/scores_base.parquet",
    log:
        f"{RESULTS}/logs/prompts/{{task}}/scores_base.log",
    benchmark:
        f"{RESULTS}/benchmarks/prompts/{{task}}/scores_base.tsv"
    conda:
        "../environment.yml"
    threads: config["compute"]["threads"]
    params:
        model=model_params(),
        prompt=config["prompt"],
        scoring=config["scoring"],
    script:
        "../workflow_scripts/score_prompts.py"


rule score_prompts:
    """Pre-update loss of every valid candidate of task k on the run's state after stage k-1."""
    input:
        model=MODEL_DIR,
        adapters=state_adapters_before,
        train=stage_train_table,
        candidates=stage_candidates,
    output:
        f"{RESULTS}/{{run}}/stage_{{stage}}/prompt_scores.parquet",
    log:
        f"{RESULTS}/logs/{{run}}/stage_{{stage}}/prompt_scores.log",
    benchmark:
        f"{RESULTS}/benchmarks/{{run}}/stage_{{stage}}/prompt_scores.tsv"
    wildcard_constraints:
        stage=r"[2-9]|[1-9][0-9]+",
    conda:
        "../environment.yml"
    threads: config["compute"]["threads"]
    params:
        model=model_params(),
        prompt=config["prompt"],
        scoring=config["scoring"],
    script:
        "../workflow_scripts/score_prompts.py"
