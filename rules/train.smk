rule train_stage:
    """Stage k of a run: a LoRA trained on task k with the run's method and prompt strategy
    (inclora/olora: a new LoRA over the frozen LoRAs of stages < k; seqlora: one LoRA continued).

    Resumable checkpoints live in results/<run>/stage_<k>/state/, which is deliberately not a
    declared output (Snakemake deletes declared outputs before a job restarts)."""
    input:
        unpack(stage_scores),
        unpack(deepspeed_config),
        model=MODEL_DIR,
        train=stage_train_table,
        candidates=stage_candidates,
        previous=earlier_adapters,
    output:
        adapter=directory(f"{RESULTS}/{{run}}/stage_{{stage}}/adapter"),
        train_log=f"{RESULTS}/{{run}}/stage_{{stage}}/train_log.parquet",
    log:
        f"{RESULTS}/logs/{{run}}/stage_{{stage}}/train.log",
    benchmark:
        f"{RESULTS}/benchmarks/{{run}}/stage_{{stage}}/train.tsv"
    conda:
        "../environment.yml"
    threads: config["compute"]["threads"]
    params:
        stage=stage_params,
        task=stage_task,
        model=model_params(),
        prompt=config["prompt"],
        lora=config["lora"],
        training=config["training"],
        options=train_options,
        state_dir=f"{RESULTS}/{{run}}/stage_{{stage}}/state",
    script:
        "../workflow_scripts/train_stage.py"
