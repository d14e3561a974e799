"""SAPO beyond the paper: re-score the candidates every M optimiser steps and switch prompts.

The paper picks one prompt per stage from the pre-update loss. Here the choice follows the
model state *during* the stage as well. The selection history is saved into every checkpoint so
a resumed job continues with the prompt the uninterrupted run would have used.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable
from pathlib import Path

import pandas as pd

from .strategies import SapoOptions, select_sapo

log = logging.getLogger(__name__)
HISTORY_FILE = "sapo_history.json"


class Selection:
    """The candidate currently trained with, and when each switch happened."""

    def __init__(self, candidate_id: int):
        self.current = candidate_id
        self.history: list[dict] = [{"step": 0, "candidate_id": candidate_id}]

    def choose(self, epoch: int, index: int) -> int:
        return self.current

    def restore(self, checkpoint: str | None) -> None:
        path = Path(checkpoint or "") / HISTORY_FILE
        if checkpoint and path.is_file():
            self.history = json.loads(path.read_text())
            self.current = self.history[-1]["candidate_id"]


def rescore_callback(
    selection: Selection,
    scorer: Callable[[object], pd.DataFrame],
    every: int,
    options: SapoOptions,
    seed: tuple[int, ...],
):
    """A TrainerCallback that re-scores every ``every`` steps; sampled choices draw from
    ``(*seed, step)`` (the stage passes its ``(run seed, stage)``)."""
    from transformers import TrainerCallback

    class Rescore(TrainerCallback):
        def on_step_end(self, args, state, control, model=None, **kwargs):
            if state.global_step % every or state.global_step >= state.max_steps:
                return
            was_training = model.training
            model.eval()
            scores = scorer(model)
            if was_training:
                model.train()
            chosen = select_sapo(scores, options, (*seed, state.global_step))
            if chosen != selection.current:
                log.warning("step %d: switching to candidate %d", state.global_step, chosen)
            selection.current = chosen
            selection.history.append({"step": state.global_step, "candidate_id": chosen})

        def on_save(self, args, state, control, **kwargs):
            folder = Path(args.output_dir) / f"checkpoint-{state.global_step}"
            if folder.is_dir():
                (folder / HISTORY_FILE).write_text(json.dumps(selection.history))

    return Rescore()
