"""Prompt strategies: which candidate instruction each training example of a stage uses.

Pure selection logic (no model code), so every choice is reproducible from the candidates, the
scores and a seed, and can be audited after the fact:

* ``original``: the task's own instruction (candidate 0), the usual continual-learning setup.
* ``fixed:<id>``: one given candidate, to measure what a single alternative wording does.
* ``sapo``: the candidate the current model fits best (lowest pre-update loss, the SAPO paper),
  optionally sampled from a softmax over losses instead of the hard argmin.
* ``paft``: a random candidate per example and epoch (PAFT), so no wording is memorised.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from numbers import Integral

import numpy as np
import pandas as pd

STRATEGIES = ("original", "sapo", "paft", "fixed")
#: The score column each SAPO criterion ranks by (see :func:`promptcl.scoring.score_candidates`).
#: batch_mean is the reference's Trainer eval loss over consecutive blocks of its per-device
#: evaluation batch; instance_mean weights every instance, token_mean every answer token equally.
CRITERIA = {
    "batch_mean": "mean_batch_loss",
    "instance_mean": "mean_instance_loss",
    "token_mean": "mean_token_loss",
}
ORIGINAL_ID = 0
_CONFIG_KEY = "runs.prompt_strategies"


def parse_strategy(name: str) -> tuple[str, int | None]:
    """Split a config strategy name into (strategy, candidate id); only ``fixed`` carries an id."""
    base, sep, arg = str(name).partition(":")
    if base not in STRATEGIES:
        raise ValueError(
            f"{_CONFIG_KEY}: unknown strategy '{name}'; expected one of "
            f"{', '.join(s for s in STRATEGIES if s != 'fixed')} or fixed:<candidate_id>"
        )
    if base != "fixed":
        if sep:
            raise ValueError(f"{_CONFIG_KEY}: strategy '{base}' takes no argument (got '{name}')")
        return base, None
    if not arg.isdigit():
        raise ValueError(
            f"{_CONFIG_KEY}: '{name}' must be written fixed:<candidate_id> with a "
            "non-negative integer id"
        )
    return base, int(arg)


def needs_scores(strategy: str) -> bool:
    """Whether a stage must score the candidates with the current model before training."""
    return parse_strategy(strategy)[0] == "sapo"


@dataclass(frozen=True)
class SapoOptions:
    """SAPO selection options.

    ``criterion`` is the loss ranked: ``batch_mean`` (the reference's: the Trainer's eval loss with
    its per-device batch of consecutive instances), ``instance_mean`` (the mean over instances of
    each instance's mean answer-token loss) or ``token_mean`` (every answer token weighted
    equally). ``temperature`` None/0 is the paper's argmin; > 0 samples from
    ``softmax(-loss / T)`` so near-ties are not decided by noise alone. ``rescore_every``
    (optimiser steps) re-scores the pool during a stage and switches to the current argmin; it
    goes beyond the paper (off by default) and is applied by the trainer, not here.
    """

    temperature: float | None = None
    rescore_every: int | None = None
    criterion: str = "batch_mean"

    def __post_init__(self) -> None:
        if self.criterion not in CRITERIA:
            raise ValueError(
                f"sapo.criterion must be one of {sorted(CRITERIA)}, got {self.criterion!r}"
            )
        t = self.temperature
        if t is not None and (isinstance(t, bool) or not np.isfinite(t) or t < 0):
            raise ValueError(f"sapo.temperature must be null or a finite number >= 0, got {t!r}")
        m = self.rescore_every
        if m is not None and (isinstance(m, bool) or not isinstance(m, Integral) or m < 1):
            raise ValueError(f"sapo.rescore_every must be null or an integer >= 1, got {m!r}")

    @property
    def greedy(self) -> bool:
        """True when selection is the deterministic argmin (no sampling)."""
        return not self.temperature

    @classmethod
    def from_config(cls, cfg: dict | None) -> SapoOptions:
        """Build from the config's sapo section; unknown keys fail loudly instead of being lost."""
        cfg = dict(cfg or {})
        unknown = sorted(set(cfg) - {"temperature", "rescore_every", "criterion"})
        if unknown:
            raise ValueError(f"sapo options: unknown keys {unknown}")
        return cls(**cfg)


def select_sapo(scores: pd.DataFrame, options: SapoOptions, seed: int | Sequence[int]) -> int:
    """The candidate id SAPO trains with, from the per-candidate loss of ``options.criterion``.

    Greedy: argmin, ties to the lower id (so the original wins ties). Sampled: a draw from
    ``numpy.random.default_rng(seed)`` over candidates ordered by id, so the result depends on
    the scores and seed only, not on row order; stages pass ``(run seed, stage)`` so that every
    stage draws afresh. Non-finite losses (failed scoring) are never chosen.
    """
    column = CRITERIA[options.criterion]
    missing = {"candidate_id", column} - set(scores.columns)
    if missing:
        raise ValueError(f"SAPO scores lack columns {sorted(missing)}")
    ids = scores["candidate_id"].astype(int).to_numpy()
    losses = pd.to_numeric(scores[column], errors="coerce").to_numpy(dtype=float)
    if len(set(ids.tolist())) != len(ids):
        raise ValueError("SAPO scores hold duplicate candidate ids")
    usable = np.isfinite(losses)
    if not usable.any():
        raise ValueError(f"SAPO: no candidate has a finite {column} to select from")
    ids, losses = ids[usable], losses[usable]
    order = np.argsort(ids, kind="stable")
    ids, losses = ids[order], losses[order]
    if options.greedy:
        return int(ids[np.argmin(losses)])  # first minimum = lowest id among ties
    logits = -(losses - losses.min()) / float(options.temperature)  # max logit is exactly 0
    weights = np.exp(logits)
    rng = np.random.default_rng(_seed_sequence(seed))
    return int(rng.choice(ids, p=weights / weights.sum()))


def _seed_sequence(seed: int | Sequence[int]) -> list[int]:
    return [int(seed)] if isinstance(seed, Integral) else [int(s) for s in seed]


def valid_candidate_ids(candidates: pd.DataFrame) -> list[int]:
    """Ids of the candidates that passed validation, ascending (the pool strategies draw from)."""
    valid = candidates[candidates["valid"].astype(bool)]
    return sorted(int(i) for i in valid["candidate_id"])


def training_instruction(
    candidates: pd.DataFrame,
    strategy: str,
    scores: pd.DataFrame | None = None,
    options: SapoOptions | None = None,
    seed: int | Sequence[int] = 0,
) -> tuple[int, str]:
    """(candidate_id, text) of the single instruction a stage trains with.

    Only valid candidates are eligible, whatever their scores. PAFT has no single instruction:
    use :class:`PaftSampler`.
    """
    kind, fixed_id = parse_strategy(strategy)
    valid = candidates[candidates["valid"].astype(bool)]
    valid_ids = valid_candidate_ids(candidates)
    if kind == "paft":
        raise ValueError("strategy paft draws a candidate per example; use PaftSampler")
    if kind == "original":
        cid = ORIGINAL_ID
    elif kind == "fixed":
        cid = fixed_id
        if cid not in valid_ids:
            raise ValueError(
                f"strategy {strategy}: candidate {cid} is not a valid candidate of this task; "
                f"valid ids: {valid_ids}"
            )
    else:
        if scores is None:
            raise ValueError("strategy sapo needs candidate scores")
        eligible = scores[scores["candidate_id"].astype(int).isin(valid_ids)]
        cid = select_sapo(eligible, options or SapoOptions(), seed)
    row = valid[valid["candidate_id"] == cid]
    if row.empty:
        raise ValueError(f"strategy {strategy}: no valid candidate to train with")
    return int(row["candidate_id"].iloc[0]), str(row["text"].iloc[0])


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
