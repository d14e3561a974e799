checkpoint paraphrase_prompts:
    """Candidate training prompts of a task: the original instruction (candidate 0) and its
    paraphrases from a file pool, a local model or an OpenAI-compatible API, validated.

    A checkpoint: the study trains one run per valid candidate, known once this job has run.
    Replies are cached under results/prompts/cache/ (not a declared output, so a rerun or a
    crash never pays twice). With the openai backend the job runs on the submitting host
    (compute nodes often have no internet); cap concurrent jobs with --resources paraphrase_api=N.
    """
    input:
        unpack(PLAN.paraphrase_inputs),
    output:
        paths.CANDIDATES,
    log:
        paths.log(paths.JOB_PARAPHRASE),
    localrule: PLAN.paraphrase_on_host
    conda:
        "../environment.yml"
    threads: PLAN.paraphrase_threads
    resources:
        paraphrase_api=1,
    params:
        prompts=PLAN.paraphrase_params(),
        model=PLAN.paraphrase_model_params(),
        cache_dir=paths.REPLY_CACHE,
        heldout=PLAN.heldout,
    script:
        "../workflow_scripts/paraphrase_prompts.py"
