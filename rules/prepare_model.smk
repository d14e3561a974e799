rule prepare_model:
    """The configured base model as an ordinary Hugging Face folder (converted or linked)."""
    input:
        unpack(model_source_inputs),
    output:
        model=directory(MODEL_DIR),
        manifest=f"{RESULTS}/model/manifest.json",
    log:
        f"{RESULTS}/logs/model/prepare_model.log",
    benchmark:
        f"{RESULTS}/benchmarks/model/prepare_model.tsv"
    conda:
        "../environment.yml"
    threads: config["compute"]["threads"]
    params:
        model=model_source_params(),
    script:
        "../workflow_scripts/prepare_model.py"
