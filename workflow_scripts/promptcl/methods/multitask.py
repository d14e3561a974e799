"""``multitask``: every task of the sequence trained jointly in one stage, the usual upper
reference of continual learning.

The run trains only its last stage, on the union of all tasks (each with the prompt the run's
strategy picks for it: SAPO scores every task on the base model). Its R has rows 0 and T only:
AP (and the unseen-task mean) is defined, the metrics that need intermediate rows are NaN.
"""

from __future__ import annotations

from .base import Method, _base


class Multitask(Method):
    name = "multitask"

    def trained_stages(self, stages: int) -> list[int]:
        return [stages]

    def joint_stages(self, stage: int) -> list[int]:
        return list(range(1, stage))

    def state_before(self, stage: int) -> list[int]:
        return []

    def state_after(self, stage: int) -> list[int]:
        return [stage]

    def build_model(
        self, model_dir, previous, lora, stage, precision="fp32", trust_remote_code=False, seed=0
    ):
        from ..adapters import new_lora

        self._check_previous(stage, previous)
        return new_lora(_base(model_dir, precision, trust_remote_code, seed), lora, stage)
