"""``paft``: a random candidate per example and epoch (PAFT), so no wording is memorised; the
trained-prompt protocol evaluates PAFT's tasks with the original prompt."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from promptcl.prompts import candidates as cands
from promptcl.strategies.base import PlanContext, Strategy, TrainingPlan


class PaftSampler:
    """Per-example, per-epoch random candidate (PAFT): the model learns the task, not one wording.

    Each epoch's table is drawn i.i.d. uniformly from ``default_rng([seed, stage, epoch])``, so
    any draw is reproducible from (seed, stage, epoch, example) alone, whatever order the trainer
    asks in, and two stages of a run never share a draw table. Ids are sorted first, so the
    pool's order in the input does not change the draws.
    """

    def __init__(
        self, candidate_ids: Sequence[int], n_examples: int, seed: int, stage: int = 0
    ) -> None:
        ids = sorted(int(i) for i in candidate_ids)
        if not ids:
            raise ValueError("PAFT needs at least one candidate")
        if len(set(ids)) != len(ids):
            raise ValueError(f"PAFT candidate ids must be unique, got {ids}")
        if n_examples < 0:
            raise ValueError(f"n_examples must be >= 0, got {n_examples}")
        if seed < 0 or stage < 0:
            raise ValueError(f"PAFT seed and stage must be >= 0, got {seed}, {stage}")
        self.candidate_ids: tuple[int, ...] = tuple(ids)
        self.n_examples = int(n_examples)
        self.seed = int(seed)
        self.stage = int(stage)
        self._tables: dict[int, np.ndarray] = {}

    def _table(self, epoch: int) -> np.ndarray:
        if epoch < 0:
            raise ValueError(f"epoch must be >= 0, got {epoch}")
        if epoch not in self._tables:
            rng = np.random.default_rng([self.seed, self.stage, epoch])
            picks = rng.integers(0, len(self.candidate_ids), size=self.n_examples)
            self._tables[epoch] = np.asarray(self.candidate_ids)[picks]
        return self._tables[epoch]

    def draw(self, epoch: int, example: int) -> int:
        """The candidate id example ``example`` trains with in ``epoch``."""
        if not 0 <= example < self.n_examples:
            raise IndexError(f"example {example} out of range [0, {self.n_examples})")
        return int(self._table(epoch)[example])

    def table(self, epoch: int) -> list[int]:
        """The draws for all examples of an epoch, in example order."""
        return [int(i) for i in self._table(epoch)]


class Paft(Strategy):
    name = "paft"

    def plan(self, ctx: PlanContext) -> TrainingPlan:
        ids = cands.training_ids(ctx.candidates)
        sampler = PaftSampler(ids, len(ctx.table), *ctx.seed)
        return TrainingPlan(
            encodings=ctx.encode(ids),
            choose=sampler.draw,
            record={"candidate_ids": ids},
            evaluation_candidate=lambda: cands.ORIGINAL_ID,
        )
