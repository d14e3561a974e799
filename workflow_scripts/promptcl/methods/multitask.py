"""``multitask``: every task of the sequence trained jointly in one stage, the usual upper
reference of continual learning.

The run trains only its last stage, on the union of all tasks (each with the prompt the run's
strategy picks for it: SAPO scores every task on the base model). Its R has rows 0 and T only:
AP (and the unseen-task mean) is defined, the metrics that need intermediate rows are NaN.
"""

from __future__ import annotations

from promptcl.methods.single import Single


class Multitask(Single):
    """A new LoRA on the base model, as ``single``, trained once on every task."""

    name = "multitask"

    def shares_first_stage(self, config: dict) -> bool:
        return False  # it trains its last stage only

    def trained_stages(self, stages: int) -> list[int]:
        return [stages]

    def joint_stages(self, stage: int) -> list[int]:
        return list(range(1, stage))
