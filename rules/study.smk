rule measure_candidates:
    """Pre-update measurements of every trained candidate of T2 on the state after T1."""
    input:
        unpack(PLAN.study.measure_inputs),
    output:
        measures=paths.STUDY_MEASURES,
        gradients=paths.STUDY_GRADIENTS,
    log:
        paths.log(paths.JOB_MEASURE),
    benchmark:
        paths.benchmark(paths.JOB_MEASURE)
    conda:
        "../environment.yml"
    threads: config["compute"]["threads"]
    params:
        branch=PLAN.study.branch_params,
        measure=PLAN.study.measure_params(),
        model=PLAN.model_params(),
        prompt=config["prompt"],
        generation=config["generation"],
    script:
        "../workflow_scripts/measure_candidates.py"


rule study_outcomes:
    """Per T2 candidate: every task's score after T2 and its change against the original."""
    input:
        candidates=lambda wildcards: PLAN.candidates_of(PLAN.study.branch(wildcards).t2),
        matrices=lambda wildcards: PLAN.study.cell_matrices(wildcards, checkpoints),
    output:
        paths.STUDY_OUTCOMES,
    log:
        paths.log(paths.JOB_OUTCOMES),
    localrule: True
    conda:
        "../environment.yml"
    params:
        branch=PLAN.study.branch_params,
    script:
        "../workflow_scripts/study_outcomes.py"


rule analyze_study:
    """The study's analyses (spread, outcome correlations, predictors, gradient cosines)."""
    input:
        unpack(PLAN.study.analysis_inputs),
    output:
        **{
            f"{a}_table": paths.fill(paths.STUDY_TABLE, analysis=a)
            for a in paths.STUDY_ANALYSES
        },
        **{
            f"{a}_figure": report(
                paths.fill(paths.STUDY_FIGURE, analysis=a),
                caption=f"../report/study_{a}.rst",
                category="Prompt-impact study",
                labels={"analysis": a},
            )
            for a in paths.STUDY_ANALYSES
        },
    log:
        paths.log(paths.JOB_ANALYZE),
    localrule: True
    conda:
        "../environment.yml"
    params:
        **PLAN.study.analysis_params(),
    script:
        "../workflow_scripts/analyze_study.py"
