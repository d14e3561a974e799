"""The workflow's plan, the DAG as data: its runs and tasks, the input functions of its rules and
the params each rule receives, built once from the validated config (``rules/common.smk``).

Torch-free: Snakemake imports it while it parses the workflow. What depends on a run's method or
prompt strategy is asked of their registered modules (:mod:`promptcl.methods`,
:mod:`promptcl.strategies`), so adding one needs no change here.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from pathlib import Path

from promptcl.analysis.metrics import REGISTRY, compared_metrics, metric, metrics_of
from promptcl.dag.runs import (
    Run,
    check_model_folders,
    check_sequences,
    check_strategies,
    check_training,
    check_values,
    expand_runs,
    model_source_file,
    resolve_tasks,
    run_name,
    task_input_files,
    task_sources,
)
from promptcl.dag.study_design import Branch, plan_study
from promptcl.errors import ConfigError
from promptcl.methods import method_of
from promptcl.prompts.backends import Backend, backend_of
from promptcl.store import paths
from promptcl.strategies import strategy_of
from promptcl.tasks.files import TaskFiles


def share_first_stages(config: dict, runs: dict[str, Run]) -> tuple[dict[str, Run], dict[str, Run]]:
    """Fork every run whose method :meth:`~promptcl.methods.base.Method.shares_first_stage`
    (declared by its own class) from the IncLoRA run of its sequence, strategy and seed at
    stage 1, so that stage is trained and evaluated once. Returns the runs and the IncLoRA runs
    that only host a shared stage 1 (not configured: their folders hold stage 1 alone, and they
    get no summary row)."""
    hosts: dict[str, Run] = {}
    out: dict[str, Run] = {}
    for name, run in runs.items():
        if (
            run.fork is not None
            or run.method == "inclora"
            or not method_of(run.method).first_stage_is_shared(config)
        ):
            out[name] = run
            continue
        host = run_name(run.sequence, "inclora", run.strategy, run.seed)
        if host not in runs:
            hosts[host] = replace(run, name=host, method="inclora")
        out[name] = replace(run, fork=(host, 1))
    return out, hosts


def check_methods(config: dict, runs) -> None:
    """The config sections of the methods in use, and the comparisons' baseline."""
    for name in sorted({run.method for run in runs}):
        try:
            method_of(name).check_config(config)
        except ValueError as err:
            raise ConfigError(str(err)) from None
    baseline = config["comparison"]["baseline"]
    try:
        method_of(baseline["method"])
        strategy_of(baseline["strategy"])
    except ValueError as err:
        raise ConfigError(f"comparison.baseline: {err}") from None


def check_metrics(config: dict) -> None:
    """Every metric the config names is computed by ``evaluation.outcomes``."""
    outcomes = config["evaluation"]["outcomes"]
    active = metrics_of(outcomes)
    named = [("comparison.metrics", m) for m in config["comparison"]["metrics"] or []]
    if (config.get("study") or {}).get("pairs"):
        named.append(("study.metric", config["study"]["metric"]))
    for key, name in named:
        if name not in REGISTRY:
            raise ConfigError(
                f"{key}: unknown metric {name!r}; registered: {', '.join(REGISTRY)} "
                "(promptcl.analysis.metrics.REGISTRY)"
            )
        if name not in active:
            raise ConfigError(
                f"{key}: {name} is not computed by evaluation.outcomes {list(outcomes)} "
                f"(they compute {list(active)}); add its outcome "
                f"({metric(name).outcome}) or choose another metric"
            )


@dataclass
class WorkflowPlan:
    config: dict
    workflow_dir: Path
    runs: dict[str, Run]
    tasks: dict[str, TaskFiles]
    model_file: Path | None
    branches: dict[str, Branch]
    study_runs: dict[str, Run]
    #: IncLoRA runs that are not configured but host a first stage other runs share
    host_runs: dict[str, Run] = field(default_factory=dict)

    @property
    def all_runs(self) -> dict[str, Run]:
        """The configured runs, every run the study may train (its cells) and the hosts of
        shared first stages."""
        return {**self.runs, **self.study_runs, **self.host_runs}

    @classmethod
    def from_config(cls, config: dict, workflow_dir: Path) -> WorkflowPlan:
        """Check the config beyond its schema and locate every file it names; raises
        :class:`ConfigError` naming the key."""
        check_sequences(config)
        check_training(config)
        check_values(config)
        runs = expand_runs(config)
        branches, cells = plan_study(config, runs)
        tasks = resolve_tasks([*runs.values(), *cells.values()], task_sources(config, workflow_dir))
        model_file = model_source_file(config, workflow_dir)
        check_model_folders(config, workflow_dir)
        check_methods(config, [*runs.values(), *cells.values()])
        check_strategies(config, runs.values())
        check_metrics(config)
        shared, hosts = share_first_stages(config, {**runs, **cells})
        runs = {name: shared[name] for name in runs}
        cells = {name: shared[name] for name in cells}
        dag = cls(config, workflow_dir, runs, tasks, model_file, branches, cells, hosts)
        dag.check_prompt_inputs()
        return dag

    # --- helpers -------------------------------------------------------------------------------

    def run(self, wildcards) -> Run:
        return self.all_runs[wildcards.run]

    def owner(self, run: str, stage: int) -> str:
        """The run that trains this run's stage ``stage``: itself, unless it forks from another
        run up to that stage (a study cell from its parent, a run whose method shares its first
        stage from the IncLoRA run), followed to the run that is not forked there."""
        fork = self.all_runs[run].fork
        return self.owner(fork[0], stage) if fork is not None and stage <= fork[1] else run

    def trained_stages(self, run: Run) -> list[int]:
        """The stages the run's method trains (and evaluates after)."""
        return method_of(run.method).trained_stages(run.stages)

    def stage_task(self, wildcards) -> str:
        """The task trained at stage k of a run."""
        run, k = self.run(wildcards), int(wildcards.stage)
        if k not in self.trained_stages(run):
            raise ConfigError(
                f"run {run.name} ({run.method}) trains stages {self.trained_stages(run)}, not {k}"
            )
        if self.owner(run.name, k) != run.name:
            raise ConfigError(
                f"stage {k} of run {run.name} is stage {k} of {self.owner(run.name, k)}"
            )
        return run.tasks[k - 1]

    def adapters(self, run: str, stages) -> list[str]:
        return [paths.fill(paths.ADAPTER, run=self.owner(run, k), stage=k) for k in stages]

    def candidates_of(self, task: str) -> str:
        return paths.fill(paths.CANDIDATES, task=task)

    def workflow_path(self, path: str) -> Path:
        path = Path(path)
        return path if path.is_absolute() else self.workflow_dir / path

    @property
    def heldout(self) -> int:
        return self.config["evaluation"]["heldout_prompts"]

    @property
    def outcomes(self) -> list[str]:
        """The evaluations every state gets: generation, likelihood or both."""
        return list(self.config["evaluation"]["outcomes"])

    @property
    def metrics(self) -> tuple[str, ...]:
        """The instance metrics those evaluations compute
        (:data:`promptcl.analysis.metrics.REGISTRY`)."""
        return metrics_of(self.outcomes)

    @property
    def compared_metrics(self) -> list[str]:
        """``comparison.metrics``, or the active outcomes' default compared metrics."""
        chosen = self.config["comparison"]["metrics"]
        return list(compared_metrics(self.outcomes) if chosen is None else chosen)

    def comparison_params(self) -> dict:
        return {**self.config["comparison"], "metrics": self.compared_metrics}

    @property
    def prompts(self) -> dict:
        return self.config["prompts"]

    @property
    def prompt_tasks(self) -> list[str]:
        """Tasks that need candidate prompts: the trained ones, and with held-out prompts every
        evaluated one."""
        held = self.heldout
        runs = self.all_runs.values()
        return sorted({t for run in runs for t in (run.eval_tasks if held else run.tasks)})

    # --- the model and the task tables ----------------------------------------------------------

    def model_params(self) -> dict:
        model = self.config["model"]
        return {k: model[k] for k in ("trust_remote_code", "precision", "attn_implementation")}

    def model_source_params(self) -> dict:
        """What decides the converted/linked model folder (not precision or the attention
        kernel, which are per job)."""
        per_job = ("precision", "attn_implementation")
        params = {k: v for k, v in self.config["model"].items() if k not in per_job}
        if self.model_file is not None:
            params["path"] = str(self.model_file)
        return params

    def model_source_inputs(self, wildcards) -> dict:
        """A GGUF file given as model.path is an input: replacing it reconverts the model."""
        return {"gguf": str(self.model_file)} if self.model_file is not None else {}

    def task_source_files(self, wildcards) -> list[str]:
        return task_input_files(self.tasks[wildcards.task])

    # --- candidate prompts ----------------------------------------------------------------------

    @property
    def backend(self) -> Backend:
        """The paraphrase backend ``prompts.backend`` names (:data:`BACKENDS`)."""
        return backend_of(self.prompts["backend"])

    def check_prompt_inputs(self) -> None:
        """Missing or malformed pools, templates, folders or keys stop the workflow before any
        job runs (the backend's own check)."""
        self.backend.check(self)

    def paraphrase_inputs(self, wildcards) -> dict:
        task = wildcards.task
        return {
            "table": paths.fill(paths.TASK_SPLIT, task=task, split="train"),
            "meta": paths.fill(paths.TASK_META, task=task),
            **self.backend.inputs(self, task),
        }

    def paraphrase_params(self) -> dict:
        """Only the active backend's options: changing another backend's settings reruns
        nothing."""
        return self.backend.params(self.prompts)

    def paraphrase_model_params(self) -> dict:
        model = self.config["model"]
        return {
            "name": model["name"],
            "precision": model["precision"],
            "trust_remote_code": model["trust_remote_code"],
            "chat_template_kwargs": self.config["prompt"]["chat_template_kwargs"],
        }

    @property
    def paraphrase_on_host(self) -> bool:
        return self.backend.on_host

    @property
    def paraphrase_threads(self) -> int:
        return self.backend.threads(self.config)

    # --- a stage: scores, training, predictions ------------------------------------------------

    def state_before(self, wildcards) -> list[str]:
        """The adapters of the state stage k starts from (the run's method decides)."""
        run = self.run(wildcards)
        return self.adapters(run.name, method_of(run.method).state_before(int(wildcards.stage)))

    def state_after(self, wildcards) -> list[str]:
        """The adapters of the state evaluated after stage k."""
        run = self.run(wildcards)
        return self.adapters(run.name, method_of(run.method).state_after(int(wildcards.stage)))

    @property
    def engine(self) -> str:
        return self.config["generation"]["engine"]

    def generation_state(self, wildcards) -> list[str]:
        """The adapters predict_stage generates with: the state after stage k, or for the vllm
        engine (one LoRA per request) stacked LoRAs combined into one, an artifact of the stage."""
        adapters = self.state_after(wildcards)
        if self.engine != "vllm" or len(adapters) < 2:
            return adapters
        run, k = self.run(wildcards), int(wildcards.stage)
        return [paths.fill(paths.COMBINED, run=self.owner(run.name, k), stage=k)]

    def stage_records(self, wildcards) -> list[str]:
        """The adapters of the trained stages up to k: their stage records say which prompt
        each task trained with (predictions after stage k evaluate the seen tasks with it too)."""
        run, k = self.run(wildcards), int(wildcards.stage)
        return self.adapters(run.name, [i for i in self.trained_stages(run) if i <= k])

    def stage_train_table(self, wildcards) -> str:
        return paths.fill(paths.TASK_SPLIT, task=self.stage_task(wildcards), split="train")

    def stage_candidates(self, wildcards) -> str:
        return self.candidates_of(self.stage_task(wildcards))

    def stage_scores(self, wildcards) -> dict:
        """Pre-update prompt scores, for strategies that choose by them (SAPO); none otherwise.
        Stage 1 of every run starts from the base model: its scores are shared."""
        run, k = self.run(wildcards), int(wildcards.stage)
        if not strategy_of(run.strategy)[0].needs_scores:
            return {}
        if not method_of(run.method).state_before(k):
            return {"scores": paths.fill(paths.BASE_SCORES, task=self.stage_task(wildcards))}
        return {"scores": paths.fill(paths.STAGE_SCORES, run=wildcards.run, stage=wildcards.stage)}

    def stage_companions(self, wildcards) -> list[dict]:
        """The other tasks stage k trains with (see :class:`promptcl.train.job.StageJob`): the
        method's jointly trained tasks (with the run's strategy; scored on the base model) and
        replayed tasks (with the prompt their stage's record names)."""
        run, k = self.run(wildcards), int(wildcards.stage)
        method = method_of(run.method)
        scored = strategy_of(run.strategy)[0].needs_scores
        out = []
        for j in method.joint_stages(k):
            task = run.tasks[j - 1]
            entry = {"role": "joint", "task": task, "stage": j}
            entry.update(self._task_files(task))
            if scored:
                if method.state_before(k):
                    raise ConfigError(
                        f"runs.methods: {run.method} trains tasks jointly from a trained state; "
                        "their prompt scores are only made on the base model"
                    )
                entry["scores"] = paths.fill(paths.BASE_SCORES, task=task)
            out.append(entry)
        for j in method.replayed_stages(k):
            task = run.tasks[j - 1]
            entry = {"role": "replay", "task": task, "stage": j}
            entry.update(self._task_files(task))
            entry["record"] = self.adapters(run.name, [j])[0]
            out.append(entry)
        return out

    def stage_companion_files(self, wildcards) -> list[str]:
        keys = ("train", "candidates", "scores", "record")
        return [c[k] for c in self.stage_companions(wildcards) for k in keys if k in c]

    def _task_files(self, task: str) -> dict:
        return {
            "train": paths.fill(paths.TASK_SPLIT, task=task, split="train"),
            "candidates": self.candidates_of(task),
        }

    def deepspeed_config(self, wildcards) -> dict:
        """The DeepSpeed config as an input, so editing it reruns training."""
        path = self.config["training"]["deepspeed"]
        return {"deepspeed": str(self.workflow_path(path))} if path else {}

    def stage_params(self, wildcards) -> dict:
        run = self.run(wildcards)
        return {"run": run.name, "method": run.method, "strategy": run.strategy, "seed": run.seed}

    def train_options(self, wildcards) -> dict:
        """Only the config sections the run's method and strategy read, so changing e.g. the
        O-LoRA lambdas reruns the O-LoRA runs only."""
        run = self.run(wildcards)
        options = dict(strategy_of(run.strategy)[0].options(self.config))
        options.update(method_of(run.method).options(self.config))
        return options

    def run_test_tables(self, wildcards) -> list[str]:
        return [
            paths.fill(paths.TASK_SPLIT, task=t, split="test")
            for t in self.run(wildcards).eval_tasks
        ]

    def run_eval_tasks(self, wildcards) -> list[str]:
        return list(self.run(wildcards).eval_tasks)

    def heldout_pool_of_task(self, wildcards) -> list[str]:
        """Evaluation reads the held-out paraphrases from the candidates (none when not asked)."""
        return [self.candidates_of(wildcards.task)] if self.heldout else []

    def heldout_pools_of_run(self, wildcards) -> list[str]:
        if not self.heldout:
            return []
        return [self.candidates_of(t) for t in self.run(wildcards).eval_tasks]

    # --- a run's metrics and the summary --------------------------------------------------------

    def zero_shot_predictions(self, wildcards) -> list[str]:
        return [paths.fill(paths.ZERO_SHOT, task=t) for t in self.run(wildcards).eval_tasks]

    def stage_predictions(self, wildcards) -> list[str]:
        run = self.run(wildcards)
        return [
            paths.fill(paths.PREDICTIONS, run=self.owner(run.name, k), stage=k)
            for k in self.trained_stages(run)
        ]

    def run_evaluations(self, wildcards) -> dict[str, list[str]]:
        """Every evaluation R is built from, per active outcome (``evaluation.outcomes``): stage
        0 per task, then each trained stage's folder (named by the run that trains it)."""
        run = self.run(wildcards)
        out = {}
        if "generation" in self.outcomes:
            out["zero_shot"] = self.zero_shot_predictions(wildcards)
            out["stages"] = self.stage_predictions(wildcards)
        if "likelihood" in self.outcomes:
            out["zero_shot_likelihood"] = [
                paths.fill(paths.ZERO_SHOT_LIKELIHOOD, task=t) for t in run.eval_tasks
            ]
            out["stage_likelihood"] = [
                paths.fill(paths.LIKELIHOOD, run=self.owner(run.name, k), stage=k)
                for k in self.trained_stages(run)
            ]
        return out

    def run_adapters(self, wildcards) -> list[str]:
        run = self.run(wildcards)
        return self.adapters(run.name, self.trained_stages(run))

    def run_layout(self, wildcards) -> dict:
        return self.layout(self.run(wildcards))

    def run_layouts(self) -> dict[str, dict]:
        """The layout of every configured run (what the comparisons pair them by)."""
        return {name: self.layout(run) for name, run in self.runs.items()}

    def run_instances(self, wildcards) -> list[str]:
        return [paths.fill(paths.INSTANCE_SCORES, run=name) for name in self.runs]

    def layout(self, run: Run) -> dict:
        return {
            "sequence": list(run.tasks),
            "unseen": list(run.unseen),
            "method": run.method,
            "strategy": run.strategy,
            "seed": run.seed,
            "name": run.sequence,
            "stages": self.trained_stages(run),
            "metrics": list(self.metrics),
        }

    def run_summaries(self, wildcards) -> dict:
        return {
            "tables": [paths.fill(paths.RUN_SUMMARY, run=name) for name in self.runs],
            "texts": [paths.fill(paths.RUN_SUMMARY_TEXT, run=name) for name in self.runs],
        }

    @property
    def figures(self):
        from promptcl.dag.figure_wiring import FigureWiring

        return FigureWiring(self)

    @property
    def study(self):
        from promptcl.dag.study_wiring import StudyWiring

        return StudyWiring(self)

    def all_targets(self, wildcards) -> list[str]:
        """The summary and figures of the configured runs, and the study's analyses."""
        summary = [paths.SUMMARY, paths.SUMMARY_TEXT] if self.runs else []
        return summary + self.figures.targets() + self.study.targets()
