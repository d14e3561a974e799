"""``single``: each task trained alone from the base model (a reference run, not a continual
learner). Row k of its R is the model that learned task k only, so its plasticity (the mean of
R[k][k]) is what each task reaches without any earlier stage; its other metrics measure nothing
continual."""

from __future__ import annotations

from promptcl.methods.base import Method, _base


class Single(Method):
    name = "single"

    def shares_first_stage(self, config: dict) -> bool:
        return True

    def state_before(self, stage: int) -> list[int]:
        return []

    def state_after(self, stage: int) -> list[int]:
        return [stage]

    def build_model(
        self, model_dir, previous, lora, stage, precision="fp32", trust_remote_code=False, seed=0
    ):
        from promptcl.model.adapters import new_lora

        self._check_previous(stage, previous)
        return new_lora(_base(model_dir, precision, trust_remote_code, seed), lora, stage)
