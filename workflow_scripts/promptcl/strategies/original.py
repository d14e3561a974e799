"""``original``: the task's own instruction (candidate 0), the usual continual-learning setup."""

from __future__ import annotations

from promptcl.prompts.candidates import ORIGINAL_ID
from promptcl.strategies.base import Strategy, require_training_candidate


class Original(Strategy):
    name = "original"

    def initial_candidate(self, candidates, argument, scores, options, seed) -> int:
        return require_training_candidate(candidates, ORIGINAL_ID, self.name)
