"""``seqlora``: one LoRA that keeps training from stage to stage (no protection against
forgetting: the lower reference)."""

from __future__ import annotations

from promptcl.methods.base import Method, _base


class SeqLoRA(Method):
    name = "seqlora"

    def shares_first_stage(self, config: dict) -> bool:
        return True  # its one LoRA starts as IncLoRA's first

    def state_before(self, stage: int) -> list[int]:
        return [stage - 1] if stage > 1 else []

    def state_after(self, stage: int) -> list[int]:
        return [stage]

    def build_model(
        self, model_dir, previous, lora, stage, precision="fp32", trust_remote_code=False, seed=0
    ):
        from promptcl.model.adapters import continued_lora, new_lora

        self._check_previous(stage, previous)
        base = _base(model_dir, precision, trust_remote_code, seed)
        if previous:
            return continued_lora(base, previous[0], stage)
        return new_lora(base, lora, stage)
