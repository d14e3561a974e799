"""Every path of the workflow's results, written once (as pypsa-eur does).

Patterns keep their Snakemake wildcards (``{task}``, ``{run}``, ``{stage}``) for rule outputs;
:func:`fill` makes a concrete path for input functions. Every job's log and benchmark live under
``results/logs/`` and ``results/benchmarks/`` by the job's name (``JOB_*``).
"""

from __future__ import annotations

import re

RESULTS = "results"

MODEL_DIR = f"{RESULTS}/model/hf"
MODEL_MANIFEST = f"{RESULTS}/model/manifest.json"

TASK_SPLIT = f"{RESULTS}/tasks/{{task}}/{{split}}.parquet"
TASK_META = f"{RESULTS}/tasks/{{task}}/task.json"

CANDIDATES = f"{RESULTS}/prompts/{{task}}/candidates.parquet"
REPLY_CACHE = f"{RESULTS}/prompts/cache"  # undeclared: replies survive reruns and crashes
BASE_SCORES = f"{RESULTS}/prompts/{{task}}/scores_base.parquet"

ZERO_SHOT = f"{RESULTS}/zero_shot/predictions/{{task}}.parquet"
ZERO_SHOT_LIKELIHOOD = f"{RESULTS}/zero_shot/likelihood/{{task}}.parquet"

STAGE = f"{RESULTS}/{{run}}/stage_{{stage}}"
STAGE_SCORES = f"{STAGE}/prompt_scores.parquet"
ADAPTER = f"{STAGE}/adapter"
STAGE_RECORD = "promptcl_stage.json"  # inside the adapter folder: what the stage trained, and how
TRAIN_LOG = f"{STAGE}/train_log.parquet"
STATE = f"{STAGE}/state"  # undeclared: Snakemake deletes declared outputs of a restarted job
PREDICTIONS = f"{STAGE}/predictions"
COMBINED = f"{STAGE}/combined_adapter"  # generation.engine vllm: the stacked LoRAs as one
LIKELIHOOD = f"{STAGE}/likelihood"  # <task>.parquet: gold log-likelihood, rank classification

MATRIX = f"{RESULTS}/{{run}}/metrics/accuracy_matrix.parquet"
RUN_SUMMARY = f"{RESULTS}/{{run}}/metrics/summary.parquet"
RUN_SUMMARY_TEXT = f"{RESULTS}/{{run}}/metrics/summary.txt"
INSTANCE_SCORES = f"{RESULTS}/{{run}}/metrics/instance_scores.parquet"  # what R averages

SUMMARY = f"{RESULTS}/summary.parquet"
SUMMARY_TEXT = f"{RESULTS}/summary.txt"
SEEDS = f"{RESULTS}/seeds.parquet"  # each configuration over its seeds
COMPARISONS = f"{RESULTS}/comparisons.parquet"  # against the baseline, paired across seeds
COMPARISONS_BY_SEED = f"{RESULTS}/comparisons_by_seed.parquet"  # paired bootstrap per seed

RUN_FIGURE = f"{RESULTS}/{{run}}/figures/{{figure}}.png"  # matrix, forgetting, loss
CANDIDATES_FIGURE = f"{STAGE}/candidate_losses.png"  # SAPO stages: the losses it chose by
COMPARISON_FIGURE = f"{RESULTS}/figures/runs_{{metric}}.png"
BASELINE_FIGURE = f"{RESULTS}/figures/baseline_{{metric}}.png"  # paired differences

STUDY = f"{RESULTS}/study"
STUDY_MEASURES = f"{STUDY}/{{branch}}/measures.parquet"
STUDY_GRADIENTS = f"{STUDY}/{{branch}}/gradients.parquet"
STUDY_OUTCOMES = f"{STUDY}/{{branch}}/outcomes.parquet"
STUDY_TABLE = f"{STUDY}/{{analysis}}.parquet"  # spread, outcome_correlations, predictors, ...
STUDY_FIGURE = f"{STUDY}/figures/{{analysis}}.png"
STUDY_ANALYSES = ("spread", "outcome_correlations", "predictors", "gradient_cosines")

REPORT_CAPTIONS = "report"  # report/*.rst: the workflow description and each figure's caption

#: Folders directly under ``results/`` that are not runs.
RESERVED = frozenset(
    {"model", "tasks", "zero_shot", "prompts", "benchmarks", "logs", "figures", "study"}
)


def alternatives(names) -> str:
    """A wildcard constraint matching exactly these names (nothing when there are none)."""
    names = list(names)
    return "|".join(re.escape(n) for n in names) if names else "(?!)"


def fill(pattern: str, **wildcards) -> str:
    """A concrete path: ``fill(CANDIDATES, task="task195")``."""
    return pattern.format(**wildcards)


#: Jobs' log and benchmark names (stems under results/logs/ and results/benchmarks/).
JOB_PREPARE_MODEL = "model/prepare_model"
JOB_PREPARE_TASKS = "tasks/{task}"
JOB_PARAPHRASE = "prompts/{task}/candidates"
JOB_BASE_SCORES = "prompts/{task}/scores_base"
JOB_STAGE_SCORES = "{run}/stage_{stage}/prompt_scores"
JOB_ZERO_SHOT = "zero_shot/predictions/{task}"
JOB_ZERO_SHOT_LIKELIHOOD = "zero_shot/likelihood/{task}"
JOB_TRAIN = "{run}/stage_{stage}/train"
JOB_PREDICT = "{run}/stage_{stage}/predictions"
JOB_LIKELIHOOD = "{run}/stage_{stage}/likelihood"
JOB_COMBINE = "{run}/stage_{stage}/combine"
JOB_AGGREGATE = "{run}/metrics/aggregate"
JOB_SUMMARIZE = "summarize"
JOB_COMPARE = "compare_runs"
JOB_PLOT_RUN = "{run}/figures/plot"
JOB_PLOT_CANDIDATES = "{run}/stage_{stage}/candidate_losses"
JOB_PLOT_RUNS = "figures/runs_{metric}"
JOB_PLOT_BASELINE = "figures/baseline_{metric}"
JOB_MEASURE = "study/{branch}/measures"
JOB_OUTCOMES = "study/{branch}/outcomes"
JOB_ANALYZE = "study/analyze"


def log(job: str) -> str:
    """The log of a job (its ``JOB_*`` name)."""
    return f"{RESULTS}/logs/{job}.log"


def benchmark(job: str) -> str:
    """Snakemake's benchmark (time, memory) of a job (its ``JOB_*`` name)."""
    return f"{RESULTS}/benchmarks/{job}.tsv"
