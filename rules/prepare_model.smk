rule prepare_model:
    """The configured base model as an ordinary Hugging Face folder (converted or linked)."""
    input:
        unpack(PLAN.model_source_inputs),
    output:
        model=directory(paths.MODEL_DIR),
        manifest=paths.MODEL_MANIFEST,
    log:
        paths.log(paths.JOB_PREPARE_MODEL),
    benchmark:
        paths.benchmark(paths.JOB_PREPARE_MODEL)
    conda:
        "../environment.yml"
    threads: config["compute"]["threads"]
    params:
        model=PLAN.model_source_params(),
    script:
        "../workflow_scripts/prepare_model.py"
