"""The single training instruction a strategy picks, for tests of the strategies' selection
(the stage job asks :meth:`Strategy.plan` instead, which also encodes the task's table)."""

from __future__ import annotations

import pandas as pd

from promptcl.prompts import candidates as cands
from promptcl.strategies import SapoOptions, strategy_of
from promptcl.strategies.paft import Paft


def training_instruction(
    candidates: pd.DataFrame,
    name: str,
    scores: pd.DataFrame | None = None,
    options: SapoOptions | None = None,
    seed=0,
) -> tuple[int, str]:
    """(candidate_id, text) of the single instruction a stage trains with.

    Only valid, not held-out candidates are eligible, whatever their scores. PAFT has no single
    instruction: use :class:`~promptcl.strategies.PaftSampler`.
    """
    strategy, argument = strategy_of(name)
    if isinstance(strategy, Paft):
        raise ValueError("strategy paft draws a candidate per example; use PaftSampler")
    sapo = {"sapo": vars(options) if options is not None else {}}
    cid = strategy.initial_candidate(candidates, argument, scores, sapo, seed)
    return cid, cands.text_of(candidates, cid)
