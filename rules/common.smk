import sys
from pathlib import Path

from snakemake.exceptions import WorkflowError
from snakemake.utils import min_version, validate

min_version("9.14.1")

WORKFLOW_DIR = Path(workflow.basedir).resolve()
sys.path.insert(0, str(WORKFLOW_DIR / "workflow_scripts"))

from promptcl.workflow import (  # noqa: E402
    ConfigError,
    check_sequences,
    expand_runs,
    resolve_tasks,
    task_input_files,
    task_sources,
)

validate(config, schema="../config/schema.yaml")

try:
    check_sequences(config)
    RUNS = expand_runs(config)
    TASKS = resolve_tasks(RUNS.values(), task_sources(config, WORKFLOW_DIR))
except ConfigError as err:
    raise WorkflowError(f"Invalid configuration: {err}") from None

RESULTS = "results"
MODEL_DIR = f"{RESULTS}/model/hf"


wildcard_constraints:
    run="|".join(RUNS),
    task="|".join(TASKS),
    stage=r"[1-9][0-9]*",


# --- params: each rule receives exactly the config it depends on ---------------------------------


def model_params():
    return {
        "trust_remote_code": config["model"]["trust_remote_code"],
        "precision": config["model"]["precision"],
    }


def run_of(wildcards):
    return RUNS[wildcards.run]


def stage_task(wildcards):
    """The task trained at stage k of a run."""
    run = run_of(wildcards)
    k = int(wildcards.stage)
    if k > run.stages:
        raise WorkflowError(f"run {run.name} has {run.stages} stages, not {k}")
    return run.tasks[k - 1]


def stage_params(wildcards):
    run = run_of(wildcards)
    return {
        "run": run.name,
        "method": run.method,
        "strategy": run.strategy,
        "seed": run.seed,
    }


# --- named input functions ----------------------------------------------------------------------


def task_sources_of(wildcards):
    return task_input_files(TASKS[wildcards.task])


def stage_train_table(wildcards):
    return f"{RESULTS}/tasks/{stage_task(wildcards)}/train.parquet"


def adapter_dir(run, k):
    return f"{RESULTS}/{run}/stage_{k}/adapter"


def earlier_adapters(wildcards):
    """Adapters of stages 1..k-1: the state stage k trains from."""
    return [adapter_dir(wildcards.run, k) for k in range(1, int(wildcards.stage))]


def adapters_upto(wildcards):
    """Adapters of stages 1..k: the state evaluated after stage k."""
    return [adapter_dir(wildcards.run, k) for k in range(1, int(wildcards.stage) + 1)]


def run_test_tables(wildcards):
    return [f"{RESULTS}/tasks/{t}/test.parquet" for t in run_of(wildcards).eval_tasks]


def run_eval_tasks(wildcards):
    return list(run_of(wildcards).eval_tasks)


def zero_shot_predictions(wildcards):
    return [
        f"{RESULTS}/zero_shot/predictions/{t}.parquet"
        for t in run_of(wildcards).eval_tasks
    ]


def stage_predictions(wildcards):
    run = run_of(wildcards)
    return [
        f"{RESULTS}/{run.name}/stage_{k}/predictions" for k in range(1, run.stages + 1)
    ]


def run_layout(wildcards):
    run = run_of(wildcards)
    return {"sequence": list(run.tasks), "unseen": list(run.unseen)}


def run_summaries(wildcards):
    return [f"{RESULTS}/{name}/metrics/summary.parquet" for name in RUNS]


def all_targets(wildcards):
    return [f"{RESULTS}/summary.parquet", f"{RESULTS}/summary.txt"]


def model_source_params():
    """What decides the converted/linked model folder (not precision, which is per job)."""
    return {k: v for k, v in config["model"].items() if k != "precision"}


def single_task(wildcards):
    return [wildcards.task]
