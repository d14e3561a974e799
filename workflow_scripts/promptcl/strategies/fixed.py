"""``fixed:<id>``: one given candidate for every example, to measure what a single alternative
wording does (the prompt-impact study trains one run per candidate this way)."""

from __future__ import annotations

from promptcl.strategies.base import Strategy, require_training_candidate


class Fixed(Strategy):
    name = "fixed"
    takes_argument = True

    def initial_candidate(self, candidates, argument, scores, options, seed) -> int:
        return require_training_candidate(candidates, int(argument), f"fixed:{argument}")
