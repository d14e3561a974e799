rule paraphrase_prompts:
    """Candidate training prompts of a task: the original instruction (candidate 0) and its
    paraphrases from a file pool, a local model or an OpenAI-compatible API, validated.

    Replies are cached under results/prompts/cache/ (not a declared output, so a rerun or a
    crash never pays twice). With the openai backend the job runs on the submitting host
    (compute nodes often have no internet); cap concurrent jobs with --resources paraphrase_api=N.
    """
    input:
        unpack(paraphrase_inputs),
    output:
        f"{RESULTS}/prompts/{{task}}/candidates.parquet",
    log:
        f"{RESULTS}/logs/prompts/{{task}}/candidates.log",
    localrule: PARAPHRASE_ON_HOST
    conda:
        "../environment.yml"
    threads: paraphrase_threads()
    resources:
        paraphrase_api=1,
    params:
        prompts=paraphrase_params(),
        model=paraphrase_model_params(),
        cache_dir=f"{RESULTS}/prompts/cache",
        heldout=config["evaluation"]["heldout_prompts"],
    script:
        "../workflow_scripts/paraphrase_prompts.py"
