"""``prompts.backend: file``: a user's pool of instructions per task (the PAFT prompt pools,
a previous run's paraphrases), validated exactly like generated ones."""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from promptcl.prompts.backends.base import Backend, ParaphraseJob, PlanView
from promptcl.prompts.paraphrase import candidates_from_pool
from promptcl.prompts.pools import PoolFormatError, load_pool


class FilePool(Backend):
    name = "file"

    def inputs(self, plan: PlanView, task: str) -> dict[str, str]:
        return {"pool": str(pool_file(plan, task))}

    def check(self, plan: PlanView) -> None:
        """Every pool exists, parses and can give prompts.min_valid valid candidates (each pool
        is read now: a few small files)."""
        from promptcl.errors import ConfigError

        missing = [str(pool_file(plan, t)) for t in plan.prompt_tasks]
        missing = [m for m in missing if not Path(m).is_file()]
        if missing:
            raise ConfigError(f"prompts.file.path: missing pool file(s) {missing}")
        for task in plan.prompt_tasks:
            path = pool_file(plan, task)
            try:
                texts = load_pool(path, key=[task, plan.tasks[task].full_name])
            except PoolFormatError as err:
                raise ConfigError(f"prompts.file.path: task {task}: {err}") from None
            check_pool_size(plan, task, path, len(texts))

    def candidates(self, job: ParaphraseJob) -> pd.DataFrame:
        pool = load_pool(Path(job.inputs["pool"]), key=[job.task, job.full_name])
        source = f"file:{Path(job.inputs['pool']).name}"
        texts = pool[: job.options["candidates"]]
        return candidates_from_pool(job.original, job.labels, texts, source, job.spec)


def pool_file(plan: PlanView, task: str) -> Path:
    """The pool of a task: prompts.file.path with {task} and {full_name} filled in."""
    pattern = plan.prompts["file"]["path"]
    return plan.workflow_path(pattern.format(task=task, full_name=plan.tasks[task].full_name))


def check_pool_size(plan: PlanView, task: str, path: Path, texts: int) -> None:
    """The job uses the first ``prompts.candidates`` texts of a pool: too few texts can never
    give ``prompts.min_valid`` valid ones to train with."""
    from promptcl.errors import ConfigError

    candidates, need = plan.prompts["candidates"], plan.prompts["min_valid"]
    most = min(texts, candidates) - plan.heldout
    if most < need:
        raise ConfigError(
            f"prompts.file.path: task {task}: {path} holds {texts} text(s): with "
            f"prompts.candidates {candidates} and evaluation.heldout_prompts {plan.heldout} "
            f"at most {max(most, 0)} can be valid, fewer than prompts.min_valid {need}"
        )
