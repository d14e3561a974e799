"""Input functions and params of the study's rules (torch-free: read while Snakemake builds the
DAG). Which T2 candidates are trained is known only once T2's candidate table is validated, so
the cells come from the ``paraphrase_prompts`` checkpoint."""

from __future__ import annotations

from promptcl.dag.study_design import Branch, trained_candidates
from promptcl.methods import method_of
from promptcl.store import paths
from promptcl.store.integrity import read_parquet


class StudyWiring:
    """What the study rules need from the plan (:class:`promptcl.dag.plan.WorkflowPlan`)."""

    def __init__(self, plan):
        self.plan = plan

    @property
    def config(self) -> dict:
        return self.plan.config["study"]

    def branch(self, wildcards) -> Branch:
        return self.plan.branches[wildcards.branch]

    def state(self, wildcards) -> list[str]:
        """The adapters of the state T2 is trained from: the parent run's, before stage 2."""
        branch = self.branch(wildcards)
        return self.plan.adapters(branch.parent, method_of(branch.method).state_before(2))

    def measure_inputs(self, wildcards) -> dict:
        branch = self.branch(wildcards)
        return {
            "model": paths.MODEL_DIR,
            "adapters": self.state(wildcards),
            "t1_train": paths.fill(paths.TASK_SPLIT, task=branch.t1, split="train"),
            "t2_train": paths.fill(paths.TASK_SPLIT, task=branch.t2, split="train"),
            "t1_candidates": self.plan.candidates_of(branch.t1),
            "t2_candidates": self.plan.candidates_of(branch.t2),
        }

    def measure_params(self) -> dict:
        plan = self.plan.config
        return {
            "instances": self.config["instances"],
            "metric": self.config["metric"],
            "modules": list(plan["lora"]["target_modules"]),
            "batch_size": plan["scoring"]["batch_size"],
            "reference_batch_size": plan["scoring"]["reference_batch_size"],
        }

    def branch_params(self, wildcards) -> dict:
        branch = self.branch(wildcards)
        return {
            "t1": branch.t1,
            "t2": branch.t2,
            "unseen": list(branch.unseen),
            "max_candidates": self.config["max_candidates"],
        }

    def trained_ids(self, branch: Branch, checkpoints) -> list[int]:
        """T2's valid, not held-out candidates (waits for its candidate table)."""
        table = checkpoints.paraphrase_prompts.get(task=branch.t2).output[0]
        return trained_candidates(read_parquet(table), self.config["max_candidates"])

    def cell_matrices(self, wildcards, checkpoints) -> list[str]:
        """The accuracy matrix of every trained candidate's run, in candidate order."""
        branch = self.branch(wildcards)
        return [
            paths.fill(paths.MATRIX, run=branch.cell(cid))
            for cid in self.trained_ids(branch, checkpoints)
        ]

    def analysis_inputs(self, wildcards) -> dict:
        names = list(self.plan.branches)
        return {
            "outcomes": [paths.fill(paths.STUDY_OUTCOMES, branch=b) for b in names],
            "measures": [paths.fill(paths.STUDY_MEASURES, branch=b) for b in names],
            "gradients": [paths.fill(paths.STUDY_GRADIENTS, branch=b) for b in names],
        }

    def analysis_params(self) -> dict:
        return {
            "branches": list(self.plan.branches),
            "metric": self.config["metric"],
            "bootstrap": self.config["bootstrap"],
        }

    def targets(self) -> list[str]:
        if not self.plan.branches:
            return []
        out = [paths.fill(paths.STUDY_TABLE, analysis=a) for a in paths.STUDY_ANALYSES]
        return out + [paths.fill(paths.STUDY_FIGURE, analysis=a) for a in paths.STUDY_ANALYSES]
