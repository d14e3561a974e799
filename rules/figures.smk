rule plot_run:
    """A run's accuracy-matrix heatmaps, forgetting curves and training loss curves."""
    input:
        unpack(PLAN.figures.run_inputs),
    output:
        matrix=report(
            paths.fill(paths.RUN_FIGURE, run="{run}", figure="matrix"),
            caption="../report/run_matrix.rst",
            category="Runs",
            subcategory="{run}",
            labels=lambda wildcards: PLAN.figures.labels(wildcards, "accuracy matrix"),
        ),
        forgetting=report(
            paths.fill(paths.RUN_FIGURE, run="{run}", figure="forgetting"),
            caption="../report/run_forgetting.rst",
            category="Runs",
            subcategory="{run}",
            labels=lambda wildcards: PLAN.figures.labels(
                wildcards, "forgetting curves"
            ),
        ),
        loss=report(
            paths.fill(paths.RUN_FIGURE, run="{run}", figure="loss"),
            caption="../report/run_loss.rst",
            category="Runs",
            subcategory="{run}",
            labels=lambda wildcards: PLAN.figures.labels(wildcards, "training loss"),
        ),
    log:
        paths.log(paths.JOB_PLOT_RUN),
    localrule: True
    conda:
        "../environment.yml"
    script:
        "../workflow_scripts/plot_run.py"


rule plot_candidates:
    """The pre-update loss of every candidate prompt of a SAPO stage, the chosen one marked."""
    input:
        unpack(PLAN.figures.candidate_inputs),
    output:
        report(
            paths.CANDIDATES_FIGURE,
            caption="../report/candidate_losses.rst",
            category="SAPO choices",
            subcategory="{run}",
            labels=lambda wildcards: PLAN.figures.labels(
                wildcards, "candidate losses"
            ),
        ),
    log:
        paths.log(paths.JOB_PLOT_CANDIDATES),
    localrule: True
    conda:
        "../environment.yml"
    params:
        criterion=PLAN.figures.criterion,
    script:
        "../workflow_scripts/plot_candidates.py"


rule plot_runs:
    """Every configuration's continual-learning metrics side by side, with intervals over
    seeds."""
    input:
        summary=paths.SUMMARY,
        seeds=paths.SEEDS,
    output:
        report(
            paths.COMPARISON_FIGURE,
            caption="../report/runs_compared.rst",
            category="Runs compared",
            labels={"metric": "{metric}", "figure": "runs compared"},
        ),
    log:
        paths.log(paths.JOB_PLOT_RUNS),
    localrule: True
    conda:
        "../environment.yml"
    script:
        "../workflow_scripts/plot_runs.py"


rule plot_baseline:
    """Each configuration minus the baseline, paired, with intervals and verdicts."""
    input:
        paths.COMPARISONS,
    output:
        report(
            paths.BASELINE_FIGURE,
            caption="../report/baseline_differences.rst",
            category="Runs compared",
            labels={"metric": "{metric}", "figure": "against the baseline"},
        ),
    log:
        paths.log(paths.JOB_PLOT_BASELINE),
    localrule: True
    conda:
        "../environment.yml"
    script:
        "../workflow_scripts/plot_baseline.py"
