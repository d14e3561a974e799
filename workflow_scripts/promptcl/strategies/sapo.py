"""``sapo``: the candidate the current model fits best: the lowest pre-update loss on the state
the stage starts from (the SAPO paper), optionally sampled from a softmax over the losses, and,
beyond the paper, re-scored every M optimiser steps during the stage (``sapo.rescore_every``).

Selection is pure (scores, options and a seed decide it), so every choice can be audited. With
re-scoring, the selection history is saved into every checkpoint, so a resumed job continues with
the prompt the uninterrupted run would have used.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from numbers import Integral
from pathlib import Path

import numpy as np
import pandas as pd

from promptcl.prompts import candidates as cands
from promptcl.prompts.scores import CRITERIA
from promptcl.strategies.base import PlanContext, Strategy, TrainingPlan, single_prompt_plan

log = logging.getLogger(__name__)
HISTORY_FILE = "sapo_history.json"


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
    ``(*seed, step)`` (the stage passes its ``(run seed, stage)``). The training loop's part
    (eval mode, checkpointed history) is :func:`promptcl.train.callbacks.every_steps_in_eval`."""
    from promptcl.train.callbacks import every_steps_in_eval

    def rescore(model, step: int) -> None:
        chosen = select_sapo(scorer(model), options, (*seed, step))
        if chosen != selection.current:
            log.warning("step %d: switching to candidate %d", step, chosen)
        selection.current = chosen
        selection.history.append({"step": step, "candidate_id": chosen})

    return every_steps_in_eval(every, rescore, HISTORY_FILE, lambda: json.dumps(selection.history))


class Sapo(Strategy):
    name = "sapo"
    needs_scores = True

    def options(self, config: dict) -> dict:
        options = {"sapo": config["sapo"]}
        if config["sapo"].get("rescore_every"):
            options["scoring"] = config["scoring"]  # re-scoring scores like score_prompts
        return options

    def initial_candidate(self, candidates, argument, scores, options, seed) -> int:
        if scores is None:
            raise ValueError("strategy sapo needs candidate scores")
        eligible = scores[scores["candidate_id"].astype(int).isin(cands.training_ids(candidates))]
        if eligible.empty:
            raise ValueError("strategy sapo: no candidate to train with among the scores")
        return select_sapo(eligible, SapoOptions.from_config(options.get("sapo")), seed)

    def plan(self, ctx: PlanContext) -> TrainingPlan:
        sapo = SapoOptions.from_config(ctx.options.get("sapo"))
        cid = self.initial_candidate(ctx.candidates, None, ctx.scores, ctx.options, ctx.seed)
        log.info("SAPO (%s) chose candidate %d", sapo.criterion, cid)
        if not sapo.rescore_every:
            return single_prompt_plan(ctx, cid, {"criterion": sapo.criterion})
        ids = cands.training_ids(ctx.candidates)
        selection = Selection(cid)
        selection.restore(_latest_checkpoint(ctx.state_dir))
        scoring = ctx.options["scoring"]
        head = ctx.table.head(scoring["instances"])
        pairs = cands.training_texts(ctx.candidates)

        def scorer(model) -> pd.DataFrame:
            from promptcl.evaluate.scoring import score_candidates

            return score_candidates(
                model,
                ctx.tokenizer,
                ctx.fmt,
                head,
                pairs,
                scoring["batch_size"],
                ctx.precision,
                reference_batch_size=scoring["reference_batch_size"],
            )

        return TrainingPlan(
            encodings=ctx.encode(ids),
            choose=selection.choose,
            record={
                "candidate_id": cid,
                "instruction": cands.text_of(ctx.candidates, cid),
                "criterion": sapo.criterion,
                "history": selection.history,  # filled in while training
            },
            evaluation_candidate=lambda: selection.current,
            callbacks=[rescore_callback(selection, scorer, sapo.rescore_every, sapo, ctx.seed)],
        )


def _latest_checkpoint(state_dir: Path | None) -> str | None:
    if state_dir is None:
        return None
    from promptcl.train.trainer import latest_checkpoint

    return latest_checkpoint(state_dir)
