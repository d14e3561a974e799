"""Stage k of a run as a recipe: set up (the method's model, the strategy's training plan) →
fit (resumable, stoppable) → save (the adapter, its stage record and training log, on rank 0).

Every rank of a multi-process job runs :func:`run_stage`; the rule's script
(``workflow_scripts/train_stage.py``) decides how many and starts them.
"""

from __future__ import annotations

import json
import logging
import shutil
from dataclasses import dataclass
from pathlib import Path

import pandas as pd

from . import candidates as cands
from . import paths
from .adapters import save_adapter
from .data import PromptedDataset
from .job import StageJob, StageSpec
from .launch import is_main_process, preemption_guard, world_size
from .modeling import adapter_name, load_tokenizer
from .strategies import PlanContext, TrainingPlan
from .trainer import StageResult, fit

log = logging.getLogger("promptcl.stage")  # the stage job's log, whatever module writes it


@dataclass
class Setup:
    """What :func:`fit` trains: the stage model, its data and its penalty."""

    model: object
    tokenizer: object
    candidates: pd.DataFrame
    scores: pd.DataFrame | None
    plan: TrainingPlan
    dataset: PromptedDataset
    penalty: object


def run_stage(job: StageJob, processes: int = 1) -> dict | None:
    """Set up, fit and (on rank 0) save stage k; the stage record on rank 0.

    SIGTERM/SIGUSR1 are caught from the start to the end of the job: during setup or training
    they mean "checkpoint after the next step and stop"; during the final save they wait."""
    spec = job.resolve(processes)
    guard = preemption_guard()
    guard.install()
    try:
        setup = set_up(spec)
        result = fit(
            setup.model,
            setup.tokenizer,
            setup.dataset,
            spec.train,
            spec.state_dir,
            setup.plan.callbacks,
            setup.penalty,
            guard,
        )
        return save(spec, setup, result) if is_main_process() else None
    finally:
        guard.uninstall()


def set_up(spec: StageSpec) -> Setup:
    job = spec.job
    spec.method.check_launch(spec.train)
    model = spec.method.build_model(
        Path(job.model_dir),
        [Path(p) for p in job.previous],
        spec.lora,
        spec.stage,
        spec.precision,
        job.model["trust_remote_code"],
        spec.seed[0],
    )
    tokenizer = load_tokenizer(Path(job.model_dir), job.model["trust_remote_code"])
    candidates = pd.read_parquet(job.candidates)
    scores = pd.read_parquet(job.scores) if job.scores else None
    plan = spec.strategy.plan(
        PlanContext(
            tokenizer=tokenizer,
            fmt=spec.fmt,
            table=pd.read_parquet(job.train),
            candidates=candidates,
            scores=scores,
            options=job.options,
            seed=spec.seed,
            argument=spec.strategy_argument,
            state_dir=spec.state_dir,
            precision=spec.precision,
        )
    )
    log.info("training prompt (%s): %s", job.run["strategy"], json.dumps(plan.record)[:300])
    dataset = PromptedDataset(plan.encodings, plan.choose)
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
    penalty = spec.method.penalty(spec.stage, job.options)
    return Setup(model, tokenizer, candidates, scores, plan, dataset, penalty)


def save(spec: StageSpec, setup: Setup, result: StageResult) -> dict:
    """The adapter folder with its stage record, the training log; the state folder removed."""
    job = spec.job
    out = Path(job.adapter_out)
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
    if setup.scores is not None:
        info["scoring_seconds"] = float(setup.scores["seconds"].iloc[0])
    (out / paths.STAGE_RECORD).write_text(json.dumps(info, indent=2, default=str) + "\n")
    result.log.to_parquet(job.train_log_out, index=False)
    shutil.rmtree(spec.state_dir, ignore_errors=True)
    log.info("done: %s", json.dumps({k: info[k] for k in ("steps", "train_loss", "train_seconds")}))
    return info
