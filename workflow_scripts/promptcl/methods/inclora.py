"""``inclora``: a new LoRA per stage, the LoRAs of earlier stages loaded, active and frozen."""

from __future__ import annotations

from promptcl.methods.base import Method, _base


class IncLoRA(Method):
    name = "inclora"

    def shares_first_stage(self, config: dict) -> bool:
        return True

    def state_before(self, stage: int) -> list[int]:
        return list(range(1, stage))

    def state_after(self, stage: int) -> list[int]:
        return list(range(1, stage + 1))

    def build_model(
        self, model_dir, previous, lora, stage, precision="fp32", trust_remote_code=False, seed=0
    ):
        from promptcl.model.adapters import new_lora

        self._check_previous(stage, previous)
        base = _base(model_dir, precision, trust_remote_code, seed)
        return new_lora(base, lora, stage, list(previous))
