"""The prompt-impact study as runs (torch-free; read while Snakemake builds the DAG).

For each task pair (T1, T2), method and seed, a *branch*: T1 is trained once with its original
prompt, then T2 is trained from that same T1 state once per valid candidate prompt of T2. Every
trained candidate is an ordinary run of the two-task sequence ``study_<T1>_<T2>`` with strategy
``fixed:<id>``; its stage 1 is the stage 1 of the original-prompt run (the branch's *parent*),
so T1 is trained once per branch and every cell is evaluated like any other run.
"""

from __future__ import annotations

from dataclasses import dataclass
from itertools import product

import pandas as pd

from promptcl.dag.runs import Run, run_name
from promptcl.errors import ConfigError
from promptcl.prompts.candidates import training_ids


@dataclass(frozen=True)
class Branch:
    """One (pair, method, seed) of the study."""

    t1: str
    t2: str
    unseen: tuple[str, ...]
    method: str
    seed: int

    @property
    def sequence(self) -> str:
        return f"study_{self.t1}_{self.t2}"

    @property
    def name(self) -> str:
        return f"{self.sequence}-{self.method}-s{self.seed}"

    @property
    def parent(self) -> str:
        """The run trained with the original prompt at both stages (candidate 0's cell)."""
        return run_name(self.sequence, self.method, "original", self.seed)

    def cell(self, candidate_id: int) -> str:
        """The run that trains T2 with candidate ``candidate_id`` (0 = the original)."""
        if int(candidate_id) == 0:
            return self.parent
        return run_name(self.sequence, self.method, f"fixed:{int(candidate_id)}", self.seed)

    def run(self, candidate_id: int) -> Run:
        strategy = "original" if int(candidate_id) == 0 else f"fixed:{int(candidate_id)}"
        return Run(
            name=self.cell(candidate_id),
            sequence=self.sequence,
            method=self.method,
            strategy=strategy,
            seed=self.seed,
            tasks=(self.t1, self.t2),
            unseen=self.unseen,
            fork=None if int(candidate_id) == 0 else (self.parent, 1),
        )


def expand_branches(config: dict) -> dict[str, Branch]:
    """Branches of ``study`` (empty when no pair is configured)."""
    study = config.get("study") or {}
    pairs = study.get("pairs") or []
    unseen = tuple(study.get("unseen") or ())
    branches: dict[str, Branch] = {}
    for i, pair in enumerate(pairs):
        t1, t2 = pair
        if t1 == t2:
            raise ConfigError(f"study.pairs[{i}]: T1 and T2 are the same task '{t1}'")
        both = sorted({t1, t2} & set(unseen))
        if both:
            raise ConfigError(f"study.unseen: {both} is also trained in study.pairs[{i}]")
    for (t1, t2), method, seed in product(pairs, study["methods"], study["seeds"]):
        branch = Branch(t1, t2, unseen, method, int(seed))
        branches[branch.name] = branch
    return branches


def study_runs(branches: dict[str, Branch], max_candidate: int) -> dict[str, Run]:
    """Every run a branch may need: the parent and one cell per candidate id 1..max_candidate
    (which of them are trained is known once T2's candidates are validated)."""
    runs: dict[str, Run] = {}
    for branch in branches.values():
        for cid in range(max_candidate + 1):
            run = branch.run(cid)
            runs[run.name] = run
    return runs


def plan_study(config: dict, runs: dict[str, Run]) -> tuple[dict[str, Branch], dict[str, Run]]:
    """The study's branches and every run they may need, checked against the configured runs."""
    branches = expand_branches(config)
    if not runs and not branches:
        raise ConfigError("runs: the config declares no run (and study.pairs no study)")
    cells = study_runs(branches, config["prompts"]["candidates"])
    clash = sorted(set(runs) & set(cells))
    if clash:
        raise ConfigError(f"runs: {clash} also named by the study; rename the sequence")
    return branches, cells


def trained_candidates(table: pd.DataFrame, limit: int | None) -> list[int]:
    """The T2 candidates a branch trains and measures: the valid, not held-out ones (the
    original first), the first ``limit`` of them when ``study.max_candidates`` is set."""
    ids = training_ids(table)
    return ids[:limit] if limit else ids
