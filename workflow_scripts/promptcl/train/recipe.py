"""Stage k of a run as a recipe: set up (the method's model, the strategy's training plan) →
fit (resumable, stoppable) → save (the adapter, its stage record and training log, on rank 0).

Every rank of a multi-process job runs :func:`run_stage`; the rule's script
(``workflow_scripts/train_stage.py``) decides how many and starts them.
"""

from __future__ import annotations

import json
import logging
import shutil
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd

from promptcl.model.adapters import save_adapter
from promptcl.model.batching import PadCollator
from promptcl.model.modeling import adapter_name, load_tokenizer, use_attention
from promptcl.prompts import candidates as cands
from promptcl.store import paths
from promptcl.store.integrity import staged_dir, write_parquet
from promptcl.strategies import PlanContext, TrainingPlan
from promptcl.tracking import stage_tracking
from promptcl.train.data import MixedDataset, PromptedDataset
from promptcl.train.job import StageJob, StageSpec
from promptcl.train.launch import is_main_process, preemption_guard, world_size
from promptcl.train.trainer import StageResult, fit

log = logging.getLogger("promptcl.stage")  # the stage job's log, whatever module writes it


@dataclass
class Setup:
    """What :func:`fit` trains: the stage model, its data, its penalty and loss term."""

    model: object
    tokenizer: object
    candidates: pd.DataFrame
    scores: pd.DataFrame | None
    plan: TrainingPlan
    dataset: PromptedDataset | MixedDataset
    penalty: object
    loss_term: object = None
    #: the method's Trainer callbacks (:class:`promptcl.methods.base.TrainingHooks`)
    callbacks: list = field(default_factory=list)
    #: task -> candidate id, for every task trained with the run's strategy (the trained-prompt
    #: protocol evaluates each with it)
    evaluation: dict[str, int] = field(default_factory=dict)
    #: the method's entries for the stage record about its extra training data (replay's)
    extra: dict = field(default_factory=dict)

    @property
    def primary(self) -> PromptedDataset:
        """The current task's examples (EWC's Fisher is estimated on them)."""
        return self.dataset.parts[0] if isinstance(self.dataset, MixedDataset) else self.dataset


def run_stage(job: StageJob, processes: int = 1) -> dict | None:
    """Set up, fit and (on rank 0) save stage k; the stage record on rank 0.

    SIGTERM/SIGUSR1 are caught from the start to the end of the job: during setup or training
    they mean "checkpoint after the next step and stop"; during the final save they wait."""
    spec = job.resolve(processes)
    guard = preemption_guard()
    guard.install()
    try:
        with stage_tracking(job, is_main_process()) as tracking:  # config tracking, else no-op
            setup = set_up(spec)
            tracking.started(job, setup)
            result = fit(
                setup.model,
                setup.tokenizer,
                setup.dataset,
                spec.train,
                spec.state_dir,
                [*setup.plan.callbacks, *setup.callbacks, *tracking.callbacks()],
                setup.penalty,
                guard,
                setup.loss_term,
            )
            info = save(spec, setup, result) if is_main_process() else None
            tracking.finished(info)
            return info
    finally:
        guard.uninstall()


def set_up(spec: StageSpec) -> Setup:
    """The method's stage model, the strategy's plans (the task's and any jointly trained
    task's), the method's extra data, penalty and loss term."""
    job = spec.job
    model = _stage_model(spec)
    tokenizer = load_tokenizer(Path(job.model_dir), job.model["trust_remote_code"])
    candidates = pd.read_parquet(job.candidates)
    scores = pd.read_parquet(job.scores) if job.scores else None
    plan = _strategy_plan(spec, tokenizer, job.train, candidates, scores, spec.seed)
    log.info("training prompt (%s): %s", job.run["strategy"], json.dumps(plan.record)[:300])
    evaluation = {job.task: plan, **_joint_plans(spec, tokenizer)}
    parts = [PromptedDataset(p.encodings, p.choose) for p in evaluation.values()]
    extra = spec.method.extra_training_data(spec, tokenizer, len(parts[0]))
    parts += extra.parts
    for key, value in extra.record.items():
        log.info("%s: %s", key, json.dumps(value))
    dataset = parts[0] if len(parts) == 1 else MixedDataset(parts)
    log.info(
        "stage %d of %s: %s on task %s, %d examples, %d process(es)%s",
        spec.stage,
        job.run["run"],
        spec.method.name,
        job.task,
        len(dataset),
        world_size(),
        f", DeepSpeed {spec.train.deepspeed}" if spec.train.deepspeed else "",
    )
    previous = [Path(p) for p in job.previous]
    penalty = spec.method.penalty(spec.stage, job.options, previous)
    hooks = spec.method.training_hooks(spec, model, tokenizer)
    return Setup(
        model,
        tokenizer,
        candidates,
        scores,
        plan,
        dataset,
        penalty,
        hooks.loss_term,
        hooks.callbacks,
        evaluation,  # plans for now: their evaluation candidate is asked after training
        {**extra.record, **hooks.record},
    )


def _stage_model(spec: StageSpec):
    """The model the method trains stage k with, on the attention kernel for training."""
    job = spec.job
    spec.method.check_launch(spec.train)
    model = spec.method.build_stage_model(spec, [Path(p) for p in job.previous])
    attention = use_attention(model, job.model.get("attn_implementation", "auto"), training=True)
    log.info("attention implementation for training: %s", attention)
    return model


def _joint_plans(spec: StageSpec, tokenizer) -> dict[str, TrainingPlan]:
    """task -> the strategy's plan, for each earlier task the stage trains as its own."""
    plans = {}
    for companion in (c for c in spec.job.companions if c["role"] == "joint"):
        table = pd.read_parquet(companion["candidates"])
        scored = pd.read_parquet(companion["scores"]) if companion.get("scores") else None
        # every jointly trained task draws from its own stream (PAFT, SAPO's sampling)
        seed = (spec.seed[0], 1000 * int(companion["stage"]) + spec.stage)
        part = _strategy_plan(spec, tokenizer, companion["train"], table, scored, seed)
        plans[companion["task"]] = part
        log.info("jointly trained %s: %s", companion["task"], json.dumps(part.record)[:200])
    return plans


def _strategy_plan(spec: StageSpec, tokenizer, train: str, candidates, scores, seed):
    """The run's prompt strategy's plan for one task's training table."""
    job = spec.job
    return spec.strategy.plan(
        PlanContext(
            tokenizer=tokenizer,
            fmt=spec.fmt,
            table=pd.read_parquet(train),
            candidates=candidates,
            scores=scores,
            options=job.options,
            seed=seed,
            argument=spec.strategy_argument,
            state_dir=spec.state_dir,
            precision=spec.precision,
        )
    )


def save(spec: StageSpec, setup: Setup, result: StageResult) -> dict:
    """The adapter folder with its stage record, the training log; the state folder removed.

    The folder is built under a temporary name and renamed once its manifest is written
    (:func:`promptcl.store.integrity.staged_dir`, the save's one atomic layer): a job killed or
    out of disk while saving leaves no adapter folder that looks complete."""
    job = spec.job
    with staged_dir(job.adapter_out, "train_stage") as out:
        info = _save_stage(spec, setup, result, out)
    write_parquet(result.log, job.train_log_out, "train_stage")
    shutil.rmtree(spec.state_dir, ignore_errors=True)
    log.info("done: %s", json.dumps({k: info[k] for k in ("steps", "train_loss", "train_seconds")}))
    return info


def _save_stage(spec: StageSpec, setup: Setup, result: StageResult, out: Path) -> dict:
    job = spec.job
    model_dir = Path(job.model_dir)
    save_adapter(
        setup.model, adapter_name(spec.stage), out, str(model_dir.resolve()), result.state_dict
    )
    evaluated = setup.plan.evaluation_candidate()
    info = {**result.info, "run": job.run["run"], "stage": spec.stage, "task": job.task}
    info["method"] = spec.method.name
    info["prompt"] = {"strategy": job.run["strategy"], **setup.plan.record}
    info["evaluation_prompt"] = {
        "candidate_id": evaluated,
        "instruction": cands.text_of(setup.candidates, evaluated),
    }
    info["evaluation_prompts"] = {}
    tables = {c["task"]: c["candidates"] for c in job.companions}
    for task, plan in setup.evaluation.items():
        cid = plan.evaluation_candidate()
        table = setup.candidates if task == job.task else pd.read_parquet(tables[task])
        info["evaluation_prompts"][task] = {
            "candidate_id": cid,
            "instruction": cands.text_of(table, cid),
        }
    info.update(setup.extra)
    info.update(
        spec.method.finish(
            setup.model,
            setup.primary,
            PadCollator(setup.tokenizer.pad_token_id, left=True),
            spec.stage,
            job.options,
            out,
            spec.precision,
            [Path(p) for p in job.previous],
        )
    )
    if setup.scores is not None:
        info["scoring_seconds"] = float(setup.scores["seconds"].iloc[0])
    (out / paths.STAGE_RECORD).write_text(json.dumps(info, indent=2, default=str) + "\n")
    return info
