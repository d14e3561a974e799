"""Prompt strategies: which candidate instruction each training example of a stage uses.

One module per strategy, registered in :data:`STRATEGIES`:

* ``original``: the task's own instruction (candidate 0), the usual continual-learning setup.
* ``fixed:<id>``: one given candidate, to measure what a single alternative wording does.
* ``sapo``: the candidate the current model fits best (lowest pre-update loss, the SAPO paper).
* ``paft``: a random candidate per example and epoch (PAFT), so no wording is memorised.

A strategy declares whether its stages need prompt scores and which config sections it reads
(the DAG asks, without importing torch) and builds the stage's :class:`TrainingPlan`. Adding one
is one new module here, its line in :data:`STRATEGIES` and the schema's pattern.
"""

from __future__ import annotations

from promptcl.strategies.base import CONFIG_KEY, PlanContext, Strategy, TrainingPlan
from promptcl.strategies.fixed import Fixed
from promptcl.strategies.original import Original
from promptcl.strategies.paft import Paft, PaftSampler
from promptcl.strategies.sapo import Sapo, SapoOptions, select_sapo

STRATEGIES: dict[str, Strategy] = {s.name: s for s in (Original(), Sapo(), Paft(), Fixed())}

__all__ = [
    "STRATEGIES",
    "PaftSampler",
    "PlanContext",
    "SapoOptions",
    "Strategy",
    "TrainingPlan",
    "needs_scores",
    "parse_strategy",
    "select_sapo",
    "strategy_of",
]


def parse_strategy(name: str) -> tuple[str, int | None]:
    """Split a config strategy name into (strategy, candidate id); only ``fixed`` carries an id."""
    base, sep, arg = str(name).partition(":")
    if base not in STRATEGIES:
        plain = [s for s, strategy in STRATEGIES.items() if not strategy.takes_argument]
        with_id = [f"{s}:<candidate_id>" for s, st in STRATEGIES.items() if st.takes_argument]
        raise ValueError(
            f"{CONFIG_KEY}: unknown strategy '{name}'; expected one of "
            f"{', '.join(plain)} or {', '.join(with_id)}"
        )
    if not STRATEGIES[base].takes_argument:
        if sep:
            raise ValueError(f"{CONFIG_KEY}: strategy '{base}' takes no argument (got '{name}')")
        return base, None
    if not arg.isdigit():
        raise ValueError(
            f"{CONFIG_KEY}: '{name}' must be written {base}:<candidate_id> with a "
            "non-negative integer id"
        )
    return base, int(arg)


def strategy_of(name: str) -> tuple[Strategy, int | None]:
    """The registered strategy of a config name, and its argument."""
    base, argument = parse_strategy(name)
    return STRATEGIES[base], argument


def needs_scores(name: str) -> bool:
    """Whether a stage must score the candidates with the current model before training."""
    return strategy_of(name)[0].needs_scores
