"""Input functions, params and report labels of the figure rules (torch- and matplotlib-free:
read while Snakemake builds the DAG)."""

from __future__ import annotations

from promptcl.store import paths
from promptcl.strategies import strategy_of

RUN_FIGURES = {
    "matrix": "accuracy matrix",
    "forgetting": "forgetting curves",
    "loss": "training loss",
}


class FigureWiring:
    """What the figure rules need from the plan (:class:`promptcl.dag.plan.WorkflowPlan`)."""

    def __init__(self, plan):
        self.plan = plan

    def run_inputs(self, wildcards) -> dict:
        run = self.plan.run(wildcards)
        return {
            "matrix": paths.fill(paths.MATRIX, run=run.name),
            "train_logs": [
                paths.fill(paths.TRAIN_LOG, run=self.plan.owner(run.name, k), stage=k)
                for k in self.plan.trained_stages(run)
            ],
        }

    def sapo_stages(self) -> list[tuple[str, int]]:
        """(run, stage) of every stage of a configured run whose strategy chooses by prompt
        scores, named by the run that trains it (a shared stage has one figure)."""
        stages = [
            (self.plan.owner(run.name, k), k)
            for run in self.plan.runs.values()
            if strategy_of(run.strategy)[0].needs_scores
            for k in self.plan.trained_stages(run)
        ]
        return list(dict.fromkeys(stages))

    def candidate_inputs(self, wildcards) -> dict:
        scores = self.plan.stage_scores(wildcards)
        if not scores:
            raise ValueError(f"run {wildcards.run} does not choose its prompts by their scores")
        return {
            **scores,
            "candidates": self.plan.stage_candidates(wildcards),
            "adapter": paths.fill(paths.ADAPTER, run=wildcards.run, stage=wildcards.stage),
        }

    def criterion(self, wildcards) -> str:
        return self.plan.config["sapo"]["criterion"]

    def labels(self, wildcards, figure: str) -> dict:
        """Report labels: filter by run, method, strategy and seed."""
        run = self.plan.run(wildcards)
        labels = {
            "run": run.name,
            "method": run.method,
            "strategy": run.strategy,
            "seed": str(run.seed),
            "figure": figure,
        }
        if "stage" in wildcards.keys():
            labels["stage"] = str(wildcards.stage)
        return labels

    def targets(self) -> list[str]:
        if not self.plan.runs:
            return []
        out = [
            paths.fill(paths.RUN_FIGURE, run=run, figure=figure)
            for run in self.plan.runs
            for figure in RUN_FIGURES
        ]
        out += [
            paths.fill(paths.CANDIDATES_FIGURE, run=run, stage=k) for run, k in self.sapo_stages()
        ]
        out += [paths.fill(paths.COMPARISON_FIGURE, metric=m) for m in self.plan.metrics]
        out += [paths.fill(paths.BASELINE_FIGURE, metric=m) for m in self.baseline_metrics()]
        return out

    def baseline_metrics(self) -> list[str]:
        """The compared metrics, when some configuration is compared with the baseline."""
        baseline = self.plan.config["comparison"]["baseline"]
        runs = self.plan.runs.values()
        base = {r.sequence for r in runs if (r.method, r.strategy) == tuple(baseline.values())}
        others = [r for r in runs if (r.method, r.strategy) != tuple(baseline.values())]
        if not any(r.sequence in base for r in others):
            return []
        return self.plan.compared_metrics
