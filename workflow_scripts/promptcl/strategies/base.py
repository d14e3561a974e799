"""What a prompt strategy is: its declarations for the DAG and the training plan it builds.

Torch-free at import (the DAG imports the registry); model code is imported inside ``plan``.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import ClassVar

import pandas as pd

from promptcl.prompts import candidates as cands

CONFIG_KEY = "runs.prompt_strategies"


@dataclass
class PlanContext:
    """Everything a strategy may use to plan a stage's training data."""

    tokenizer: object
    fmt: object  # promptcl.prompts.prompting.PromptFormat
    table: pd.DataFrame  # the stage's task table (training split)
    candidates: pd.DataFrame  # the task's candidate table (all rows)
    scores: pd.DataFrame | None  # pre-update scores on the stage's starting state, if needed
    options: dict  # the config sections the strategy declared (Strategy.options)
    seed: tuple[int, int]  # (run seed, stage): every stage draws afresh
    argument: int | None = None  # fixed:<id>
    state_dir: Path | None = None  # the stage's checkpoint folder (for resumable state)
    precision: str = "fp32"

    def encode(self, ids) -> dict[int, list[dict]]:
        """The table encoded once per candidate id (answer-only labels)."""
        from promptcl.train.data import encode_candidates

        return encode_candidates(
            self.tokenizer,
            self.fmt,
            self.table,
            {i: cands.text_of(self.candidates, i) for i in ids},
        )


@dataclass
class TrainingPlan:
    """A stage's training data as the strategy shapes it.

    ``choose(epoch, index)`` picks the candidate id example ``index`` trains with in ``epoch``;
    ``record`` is what the stage record says about the prompt; ``evaluation_candidate()`` is the
    candidate the trained-prompt protocol evaluates the task with (asked after training).
    """

    encodings: dict[int, list[dict]]
    choose: Callable[[int, int], int]
    record: dict
    evaluation_candidate: Callable[[], int]
    callbacks: list = field(default_factory=list)


class Strategy:
    """A prompt strategy: one module each, registered in :data:`promptcl.strategies.STRATEGIES`."""

    name: ClassVar[str]
    #: its stages need the candidates' pre-update scores on the stage's starting state
    needs_scores: ClassVar[bool] = False
    #: it is written ``name:<candidate id>`` in runs.prompt_strategies
    takes_argument: ClassVar[bool] = False

    def options(self, config: dict) -> dict:
        """The config sections its training reads (params of train_stage: changing any other
        section reruns nothing of its runs)."""
        return {}

    def initial_candidate(
        self,
        candidates: pd.DataFrame,
        argument: int | None,
        scores: pd.DataFrame | None,
        options: dict,
        seed,
    ) -> int:
        """The one candidate the stage trains with (strategies with a single prompt)."""
        raise ValueError(f"strategy {self.name} has no single training prompt")

    def plan(self, ctx: PlanContext) -> TrainingPlan:
        """The stage's training plan; by default the single :meth:`initial_candidate`."""
        cid = self.initial_candidate(
            ctx.candidates, ctx.argument, ctx.scores, ctx.options, ctx.seed
        )
        return single_prompt_plan(ctx, cid, {})


def single_prompt_plan(ctx: PlanContext, cid: int, record: dict) -> TrainingPlan:
    """Every example with candidate ``cid`` (original, fixed, SAPO without re-scoring)."""
    return TrainingPlan(
        encodings=ctx.encode([cid]),
        choose=lambda epoch, index: cid,
        record={"candidate_id": cid, "instruction": cands.text_of(ctx.candidates, cid), **record},
        evaluation_candidate=lambda: cid,
    )


def require_training_candidate(candidates: pd.DataFrame, cid: int, strategy: str) -> int:
    ids = cands.training_ids(candidates)
    if cid not in ids:
        raise ValueError(
            f"strategy {strategy}: candidate {cid} is not a valid candidate of this task; "
            f"valid ids: {ids}"
        )
    return cid
