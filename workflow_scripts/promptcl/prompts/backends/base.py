"""What a paraphrase backend declares: where its job runs, with how many threads and workers,
the inputs and config it reads, the checks made while the DAG is built, and how it makes a task's
candidate table. One module per backend, registered in :data:`promptcl.prompts.backends.BACKENDS`.

Torch-free at import (the Snakefile builds the DAG from these declarations); a backend imports
its heavy client inside :meth:`GeneratingBackend.build`.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import pandas as pd

from promptcl.prompts.paraphrase import (
    Generator,
    ReplyCache,
    Request,
    ValidationSpec,
    build_request,
    candidates_from_replies,
    collect_replies,
    load_request_template,
)

log = logging.getLogger(__name__)


class PlanView(Protocol):
    """What a backend reads of the workflow plan (:class:`promptcl.dag.plan.WorkflowPlan`)
    while the DAG is built; a Protocol, so this layer never imports the DAG's."""

    workflow_dir: Path

    @property
    def prompts(self) -> dict: ...

    @property
    def heldout(self) -> int: ...

    @property
    def tasks(self) -> Mapping[str, Any]: ...

    @property
    def prompt_tasks(self) -> list[str]: ...

    def workflow_path(self, value: str) -> Path: ...

    def candidates_of(self, task: str) -> str: ...


@dataclass(frozen=True)
class ParaphraseJob:
    """One paraphrase_prompts job: the task's original instruction and labels, the validation of
    the candidates, the job's input files, ``prompts`` options (the active backend's only) and the
    workflow's model settings (:meth:`WorkflowPlan.paraphrase_model_params`)."""

    task: str
    full_name: str
    original: str
    labels: list[str]
    spec: ValidationSpec
    inputs: Mapping[str, str]
    options: Mapping[str, Any]
    model: Mapping[str, Any]
    cache_dir: Path


class Backend:
    """A source of candidate instructions for ``prompts.backend: <name>``; its options live in the
    config section ``prompts.<name>``."""

    name: str = ""
    #: whether it sends requests to a model (and so reads prompts.request_template)
    generates: bool = False
    #: its job runs on the submitting host (an API needs the internet compute nodes may lack)
    on_host: bool = True

    def threads(self, config: dict) -> int:
        """Threads the job asks for (a local model uses compute.threads)."""
        return 1

    def params(self, prompts: dict) -> dict:
        """The ``prompts`` options the job reads: changing another backend's settings reruns
        nothing."""
        keep = ["backend", "candidates", "min_valid", "seed", "validation", self.name]
        return {k: prompts[k] for k in keep}

    def inputs(self, plan: PlanView, task: str) -> dict[str, str]:
        """Files the job reads beside the task table (a rerun follows their changes)."""
        return {}

    def check(self, plan: PlanView) -> None:
        """Raise :class:`promptcl.dag.runs.ConfigError` naming the key for anything a job would
        fail on; called once while the DAG is built."""

    def candidates(self, job: ParaphraseJob) -> pd.DataFrame:
        """The task's candidate table (:func:`promptcl.prompts.candidates.make_table`'s
        columns), candidate 0 the original instruction, validated; held-out ones are chosen
        later by the rule."""
        raise NotImplementedError


class GeneratingBackend(Backend):
    """A backend that asks a model for ``prompts.candidates`` paraphrases with the request
    template; replies are cached per request under ``job.cache_dir``."""

    generates = True

    def params(self, prompts: dict) -> dict:
        return {
            **super().params(prompts),
            **{k: prompts[k] for k in ("delimiters", "request_template")},
        }

    def inputs(self, plan: PlanView, task: str) -> dict[str, str]:
        return {"template": str(plan.workflow_path(plan.prompts["request_template"]))}

    def check(self, plan: PlanView) -> None:
        from promptcl.errors import ConfigError
        from promptcl.prompts.paraphrase import TemplateError

        template = plan.workflow_path(plan.prompts["request_template"])
        if not template.is_file():
            raise ConfigError(f"prompts.request_template: {template} does not exist")
        try:
            load_request_template(template, plan.prompts["delimiters"])
        except TemplateError as err:
            raise ConfigError(f"prompts.request_template: {err}") from None

    def workers(self, options: Mapping[str, Any]) -> int:
        """Requests in flight at once."""
        return 1

    def build(self, job: ParaphraseJob) -> Generator:
        """The client that completes requests (made in the job, never at DAG time)."""
        raise NotImplementedError

    def candidates(self, job: ParaphraseJob) -> pd.DataFrame:
        generator = self.build(job)
        delimiters = tuple(job.options["delimiters"])
        template = load_request_template(Path(job.inputs["template"]), delimiters)
        text = build_request(template, job.original, job.labels, delimiters)
        seed = job.options["seed"]
        requests = [Request(job.task, i, text, seed) for i in range(job.options["candidates"])]
        cache = ReplyCache(job.cache_dir)
        replies = collect_replies(generator, requests, cache, self.workers(job.options))
        log.info("%s: %d cached replies, %d new", job.task, cache.hits, cache.misses)
        return candidates_from_replies(
            job.task, job.original, job.labels, replies, generator, job.spec, delimiters
        )
