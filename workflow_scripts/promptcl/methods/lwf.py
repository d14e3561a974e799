"""``lwf``: learning without forgetting (Li & Hoiem 2017) on IncLoRA: a new LoRA per stage over
the frozen earlier ones, plus a distillation term towards the state before the stage.

The teacher is the same model with the new LoRA's scaling set to 0, in eval mode and without
gradients: exactly the state stage k started from, with no second copy in memory. On every
micro-batch of the current task the term is

    weight · T² · mean over answer positions of KL(softmax(teacher / T) ‖ softmax(student / T))

over the positions that carry the task loss (the vocabulary projection the loss already needs),
in float32. Gradients reach only the new LoRA: everything else is frozen.
"""

from __future__ import annotations

import math
from contextlib import contextmanager
from dataclasses import dataclass
from typing import TYPE_CHECKING

from promptcl.methods.inclora import IncLoRA
from promptcl.prompts.prompting import IGNORE_INDEX

if TYPE_CHECKING:
    import torch


@dataclass(frozen=True)
class LwfSpec:
    """``config.yaml: lwf``: the distillation term's weight and temperature."""

    weight: float = 1.0
    temperature: float = 2.0

    @classmethod
    def from_config(cls, cfg: dict) -> LwfSpec:
        unknown = set(cfg) - {"weight", "temperature"}
        if unknown:
            raise ValueError(f"lwf: unknown keys {sorted(unknown)}")
        weight = float(cfg.get("weight", cls.weight))
        temperature = float(cfg.get("temperature", cls.temperature))
        if not math.isfinite(weight) or weight < 0:
            raise ValueError(f"lwf.weight: expected a finite number >= 0, got {weight}")
        if not math.isfinite(temperature) or temperature <= 0:
            raise ValueError(f"lwf.temperature: expected a number > 0, got {temperature}")
        return cls(weight=weight, temperature=temperature)


@contextmanager
def without_adapter(model, adapter: str):
    """The model with ``adapter``'s contribution switched off (scaling 0) and in eval mode."""
    from peft.tuners.lora import LoraLayer

    layers = [m for m in model.modules() if isinstance(m, LoraLayer) and adapter in m.scaling]
    if not layers:
        raise ValueError(f"adapter '{adapter}' wraps no module of this model")
    saved = [m.scaling[adapter] for m in layers]
    was_training = model.training
    try:
        for m in layers:
            m.scaling[adapter] = 0.0
        model.eval()
        yield model
    finally:
        for m, value in zip(layers, saved, strict=True):
            m.scaling[adapter] = value
        model.train(was_training)


def distillation(
    student: torch.Tensor, teacher: torch.Tensor, labels: torch.Tensor, temperature: float
) -> torch.Tensor:
    """T² · mean over label positions of KL(teacher ‖ student) at temperature T.

    ``student``/``teacher``: (batch, positions, vocab) logits; ``labels``: (batch, positions),
    aligned with them as a causal LM's loss is (position t predicts label t + 1)."""
    import torch
    import torch.nn.functional as F

    mask = labels[:, 1:] != IGNORE_INDEX
    if not bool(mask.any()):
        return student.sum() * 0.0
    s = student[:, :-1][mask].float() / temperature
    t = teacher[:, :-1][mask].float() / temperature
    with torch.autocast(device_type=s.device.type, enabled=False):
        kl = F.kl_div(F.log_softmax(s, -1), F.log_softmax(t, -1), log_target=True, reduction="none")
        return kl.sum(-1).mean() * temperature**2


class LwF(IncLoRA):
    name = "lwf"
    config_sections = ("lwf",)

    def check_config(self, config: dict) -> None:
        LwfSpec.from_config(config["lwf"])

    def shares_first_stage(self, config: dict) -> bool:
        return False  # stage 1 distils towards the base model

    def loss_term(self, stage: int, options: dict):
        import torch

        from promptcl.model.modeling import adapter_name

        spec = LwfSpec.from_config(options["lwf"])
        adapter = adapter_name(stage)

        def term(model, inputs, outputs):
            with torch.no_grad(), without_adapter(model, adapter):
                teacher = model(**{k: v for k, v in inputs.items() if k != "labels"}).logits
            value = distillation(outputs.logits, teacher, inputs["labels"], spec.temperature)
            return spec.weight * value, {"lwf": float(value.detach())}

        return term
