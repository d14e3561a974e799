rule train_stage:
    """Stage k of a run: a LoRA trained on task k with the run's method and prompt strategy
    (inclora/olora/lwf: a new LoRA over the frozen LoRAs of stages < k; seqlora/replay/ewc: one
    LoRA continued; single: a LoRA from the base model; multitask: all tasks at stage T).
    Where a method's stage 1 trains what IncLoRA's does (olora with lambda2 0, seqlora, replay,
    single), that stage is the IncLoRA run's, trained once (PLAN.owner).

    Resumable checkpoints live in results/<run>/stage_<k>/state/, which is deliberately not a
    declared output (Snakemake deletes declared outputs before a job restarts)."""
    input:
        unpack(PLAN.stage_scores),
        unpack(PLAN.deepspeed_config),
        model=paths.MODEL_DIR,
        train=PLAN.stage_train_table,
        candidates=PLAN.stage_candidates,
        previous=PLAN.state_before,
        companions=PLAN.stage_companion_files,
    output:
        adapter=directory(paths.ADAPTER),
        train_log=paths.TRAIN_LOG,
    log:
        paths.log(paths.JOB_TRAIN),
    benchmark:
        paths.benchmark(paths.JOB_TRAIN)
    conda:
        "../environment.yml"
    threads: config["compute"]["threads"]
    params:
        stage=PLAN.stage_params,
        task=PLAN.stage_task,
        model=PLAN.model_params(),
        prompt=config["prompt"],
        lora=config["lora"],
        training=config["training"],
        options=PLAN.train_options,
        companions=PLAN.stage_companions,
        state_dir=paths.STATE,
    script:
        "../workflow_scripts/train_stage.py"
