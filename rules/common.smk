import sys
from pathlib import Path

from snakemake.exceptions import WorkflowError
from snakemake.utils import min_version, validate

min_version("9.14.1")

WORKFLOW_DIR = Path(workflow.basedir).resolve()
sys.path.insert(0, str(WORKFLOW_DIR / "workflow_scripts"))

from promptcl.strategies import needs_scores  # noqa: E402
from promptcl.workflow import (  # noqa: E402
    ConfigError,
    check_api_key,
    check_sequences,
    check_training,
    expand_runs,
    model_source_file,
    resolve_tasks,
    task_input_files,
    task_sources,
)

validate(config, schema="../config/schema.yaml")

try:
    check_sequences(config)
    check_training(config)
    RUNS = expand_runs(config)
    TASKS = resolve_tasks(RUNS.values(), task_sources(config, WORKFLOW_DIR))
    MODEL_FILE = model_source_file(config, WORKFLOW_DIR)
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
    """The adapters stage k trains on top of (or, for seqlora, continues)."""
    return state_adapters_before(wildcards)


def state_adapters_before(wildcards):
    """The model state before stage k: stacked LoRAs 1..k-1, or seqlora's single LoRA k-1."""
    k = int(wildcards.stage)
    if run_of(wildcards).method == "seqlora":
        return [adapter_dir(wildcards.run, k - 1)] if k > 1 else []
    return [adapter_dir(wildcards.run, i) for i in range(1, k)]


def stages_upto(wildcards):
    """The adapters of stages 1..k: their stage records say which prompt each task trained
    with (predictions after stage k evaluate the seen tasks with it too)."""
    k = int(wildcards.stage)
    return [adapter_dir(wildcards.run, i) for i in range(1, k + 1)]


def adapters_upto(wildcards):
    """The state evaluated after stage k: LoRAs 1..k stacked, or seqlora's LoRA k alone."""
    k = int(wildcards.stage)
    if run_of(wildcards).method == "seqlora":
        return [adapter_dir(wildcards.run, k)]
    return [adapter_dir(wildcards.run, i) for i in range(1, k + 1)]


def train_options(wildcards):
    """Only the options the run's method and strategy use, so changing e.g. the O-LoRA lambdas
    reruns the O-LoRA runs only."""
    run = run_of(wildcards)
    options = {}
    if needs_scores(run.strategy):
        options["sapo"] = config["sapo"]
        if config["sapo"].get("rescore_every"):
            options["scoring"] = config["scoring"]
    if run.method == "olora":
        options["olora"] = config["olora"]
    return options


def deepspeed_config(wildcards):
    """The DeepSpeed config as an input, so editing it reruns training (used when a stage trains
    with several processes, or always with training.deepspeed_single_process)."""
    path = config["training"]["deepspeed"]
    if not path:
        return {}
    return {"deepspeed": str(WORKFLOW_DIR / path)}


def stage_scores(wildcards):
    """Pre-update prompt losses, for strategies that choose by them (SAPO); none otherwise."""
    if not needs_scores(run_of(wildcards).strategy):
        return {}
    if (
        int(wildcards.stage) == 1
    ):  # every run's stage 1 trains from the base model: shared
        return {
            "scores": f"{RESULTS}/prompts/{stage_task(wildcards)}/scores_base.parquet"
        }
    return {
        "scores": f"{RESULTS}/{wildcards.run}/stage_{wildcards.stage}/prompt_scores.parquet"
    }


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


def run_adapters(wildcards):
    run = run_of(wildcards)
    return [adapter_dir(run.name, k) for k in range(1, run.stages + 1)]


def run_layout(wildcards):
    run = run_of(wildcards)
    return {
        "sequence": list(run.tasks),
        "unseen": list(run.unseen),
        "method": run.method,
        "strategy": run.strategy,
        "seed": run.seed,
        "name": run.sequence,
    }


def run_summaries(wildcards):
    return [f"{RESULTS}/{name}/metrics/summary.parquet" for name in RUNS]


def all_targets(wildcards):
    return [f"{RESULTS}/summary.parquet", f"{RESULTS}/summary.txt"]


def model_source_params():
    """What decides the converted/linked model folder (not precision, which is per job)."""
    params = {k: v for k, v in config["model"].items() if k != "precision"}
    if MODEL_FILE is not None:
        params["path"] = str(MODEL_FILE)
    return params


def model_source_inputs(wildcards):
    """A GGUF file given as model.path is an input: replacing it reconverts the model."""
    return {"gguf": str(MODEL_FILE)} if MODEL_FILE is not None else {}


def single_task(wildcards):
    return [wildcards.task]


# --- candidate prompts --------------------------------------------------------------------------

PROMPTS = config["prompts"]
# The API backend needs the internet: run it where Snakemake runs, not on compute nodes.
PARAPHRASE_ON_HOST = PROMPTS["backend"] != "local"


def workflow_path(path):
    path = Path(path)
    return path if path.is_absolute() else WORKFLOW_DIR / path


def pool_file(task):
    """The file-backend pool of a task; {task} and {full_name} are filled in."""
    pattern = PROMPTS["file"]["path"]
    return workflow_path(pattern.format(task=task, full_name=TASKS[task].full_name))


HELDOUT = config["evaluation"]["heldout_prompts"]


# tasks that need candidate prompts: the trained ones, and with held-out prompts every evaluated one
PROMPT_TASKS = sorted(
    {t for run in RUNS.values() for t in (run.eval_tasks if HELDOUT else run.tasks)}
)


def check_prompt_inputs():
    """Missing pool or template files stop the workflow before any job runs."""
    trained = PROMPT_TASKS
    if PROMPTS["backend"] == "file":
        missing = sorted(
            str(pool_file(t)) for t in trained if not pool_file(t).is_file()
        )
        if missing:
            raise WorkflowError(
                f"Invalid configuration: prompts.file.path: missing pool file(s) {missing}"
            )
    elif not workflow_path(PROMPTS["request_template"]).is_file():
        raise WorkflowError(
            "Invalid configuration: prompts.request_template: "
            f"{workflow_path(PROMPTS['request_template'])} does not exist"
        )


check_prompt_inputs()

try:
    check_api_key(
        config,
        [Path(f"{RESULTS}/prompts/{t}/candidates.parquet") for t in PROMPT_TASKS],
    )
except ConfigError as err:
    raise WorkflowError(f"Invalid configuration: {err}") from None


def paraphrase_inputs(wildcards):
    inputs = {
        "table": f"{RESULTS}/tasks/{wildcards.task}/train.parquet",
        "meta": f"{RESULTS}/tasks/{wildcards.task}/task.json",
    }
    if PROMPTS["backend"] == "file":
        inputs["pool"] = str(pool_file(wildcards.task))
    else:
        inputs["template"] = str(workflow_path(PROMPTS["request_template"]))
    if PROMPTS["backend"] == "local" and not PROMPTS["local"]["model"]:
        inputs["model"] = MODEL_DIR
    return inputs


def paraphrase_params():
    """Only the active backend's options: changing another backend's settings reruns nothing."""
    keep = [
        "backend",
        "candidates",
        "min_valid",
        "seed",
        "validation",
        PROMPTS["backend"],
    ]
    if PROMPTS["backend"] != "file":
        keep += ["delimiters", "request_template"]
    return {k: PROMPTS[k] for k in keep}


def paraphrase_model_params():
    return {
        "name": config["model"]["name"],
        "precision": config["model"]["precision"],
        "trust_remote_code": config["model"]["trust_remote_code"],
        "chat_template_kwargs": config["prompt"]["chat_template_kwargs"],
    }


def paraphrase_threads():
    return config["compute"]["threads"] if PROMPTS["backend"] == "local" else 1


def heldout_pool_of_task(wildcards):
    """Evaluation reads the held-out paraphrases from the candidates (none when not asked for)."""
    return [f"{RESULTS}/prompts/{wildcards.task}/candidates.parquet"] if HELDOUT else []


def heldout_pools_of_run(wildcards):
    if not HELDOUT:
        return []
    return [
        f"{RESULTS}/prompts/{t}/candidates.parquet"
        for t in run_of(wildcards).eval_tasks
    ]


def stage_candidates(wildcards):
    return f"{RESULTS}/prompts/{stage_task(wildcards)}/candidates.parquet"
