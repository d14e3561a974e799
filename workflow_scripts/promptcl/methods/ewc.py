"""``ewc``: elastic weight consolidation (Kirkpatrick et al. 2017) on one LoRA continued across
stages (the ``seqlora`` setting, where forgetting happens in the trained weights).

At the end of stage k the diagonal empirical Fisher of the stage's LoRA parameters is estimated
on the stage's training data: the mean over examples of each example's squared gradient of its
mean answer-token loss (batch size 1, dropout off). It is accumulated online (Schwarz et al.
2018), ``F_k = gamma * F_{k-1} + Fisher_k``, and saved as ``ewc_fisher.safetensors`` in the stage's
adapter folder, beside the weights θ*_k it anchors. Stage k+1 then adds once per update

    (λ / 2) · Σ_params F_k · (θ - θ*_k)²

computed in float32; the training log keeps it apart from the task loss.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from promptcl.methods.seqlora import SeqLoRA

if TYPE_CHECKING:
    import torch

FISHER_FILE = "ewc_fisher.safetensors"
WEIGHTS_FILE = "adapter_model.safetensors"


@dataclass(frozen=True)
class EwcSpec:
    """``config.yaml: ewc``: the penalty weight λ, the online decay γ and how many of the
    stage's examples estimate the Fisher (null: all)."""

    lambda_: float = 1000.0
    gamma: float = 1.0
    fisher_examples: int | None = None

    @classmethod
    def from_config(cls, cfg: dict) -> EwcSpec:
        unknown = set(cfg) - {"lambda", "gamma", "fisher_examples"}
        if unknown:
            raise ValueError(f"ewc: unknown keys {sorted(unknown)}")
        lam = float(cfg.get("lambda", cls.lambda_))
        gamma = float(cfg.get("gamma", cls.gamma))
        if not math.isfinite(lam) or lam < 0:
            raise ValueError(f"ewc.lambda: expected a finite number >= 0, got {lam}")
        if not 0 <= gamma <= 1:
            raise ValueError(f"ewc.gamma: expected a number in [0, 1], got {gamma}")
        n = cfg.get("fisher_examples")
        if n is not None and int(n) < 1:
            raise ValueError(f"ewc.fisher_examples: expected an integer >= 1 or null, got {n}")
        return cls(lambda_=lam, gamma=gamma, fisher_examples=None if n is None else int(n))


def lora_parameters(model, adapter: str) -> dict[str, torch.nn.Parameter]:
    """The adapter's parameters under the keys PEFT saves them with (adapter name removed)."""
    marker = f".{adapter}."
    out = {name.replace(marker, "."): p for name, p in model.named_parameters() if marker in name}
    if not out:
        raise ValueError(f"adapter '{adapter}' has no parameters in this model")
    return out


def diagonal_fisher(
    model, examples: Sequence[dict], collator, adapter: str, precision: str = "fp32"
) -> dict[str, torch.Tensor]:
    """Mean over ``examples`` of the squared gradient of each example's loss, per parameter of
    ``adapter`` (float32, on the CPU). The model is left in the mode it came in, gradients
    zeroed."""
    import torch

    params = lora_parameters(model, adapter)
    if not examples:
        raise ValueError("the Fisher needs at least one example")
    fisher = {k: torch.zeros(p.shape, dtype=torch.float32) for k, p in params.items()}
    was_training = model.training
    model.eval()
    device = next(iter(params.values())).device
    try:
        for example in examples:
            model.zero_grad(set_to_none=True)
            batch = {k: v.to(device) for k, v in collator([example]).items()}
            with torch.autocast(device.type, dtype=torch.bfloat16, enabled=precision == "bf16"):
                loss = model(**batch).loss
            loss.backward()
            for key, param in params.items():
                if param.grad is not None:
                    fisher[key] += param.grad.detach().float().cpu() ** 2
    finally:
        model.zero_grad(set_to_none=True)
        model.train(was_training)
    return {k: v / len(examples) for k, v in fisher.items()}


def accumulate(
    previous: dict[str, torch.Tensor] | None, new: dict[str, torch.Tensor], gamma: float
) -> dict[str, torch.Tensor]:
    """Online EWC: ``gamma * previous + new`` (just ``new`` at the first stage)."""
    if previous is None:
        return dict(new)
    if set(previous) != set(new):
        raise ValueError("the earlier Fisher covers other parameters than this stage's LoRA")
    return {k: gamma * previous[k] + new[k] for k in new}


def ewc_penalty(
    model,
    adapter: str,
    fisher: dict[str, torch.Tensor],
    anchor: dict[str, torch.Tensor],
    lam: float,
) -> tuple[torch.Tensor, dict[str, float]]:
    """((λ/2) Σ F (θ - θ*)² as a float32 scalar, {"ewc": the unweighted sum})."""
    import torch

    params = lora_parameters(model, adapter)
    missing = sorted(set(params) - set(fisher)) or sorted(set(params) - set(anchor))
    if missing:
        raise ValueError(f"EWC: no Fisher or anchor for {missing[:3]}")
    device = next(iter(params.values())).device
    with torch.autocast(device_type=device.type, enabled=False):
        terms = [
            (fisher[k].to(device) * (p.float() - anchor[k].to(device).float()) ** 2).sum()
            for k, p in params.items()
        ]
        total = torch.stack(terms).sum()
    return 0.5 * lam * total, {"ewc": float(total.detach())}


def save_fisher(fisher: dict[str, torch.Tensor], folder: Path) -> Path:
    from safetensors.torch import save_file

    path = Path(folder) / FISHER_FILE
    save_file({k: v.contiguous() for k, v in fisher.items()}, str(path))
    return path


def load_tensors(path: Path) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    if not Path(path).is_file():
        raise FileNotFoundError(f"EWC: {path} does not exist (was its stage trained with ewc?)")
    return load_file(str(path))


class EWC(SeqLoRA):
    name = "ewc"
    config_sections = ("ewc",)

    def check_config(self, config: dict) -> None:
        EwcSpec.from_config(config["ewc"])

    def shares_first_stage(self, config: dict) -> bool:
        return False  # its stage 1 also saves the Fisher information of task 1

    def check_launch(self, train) -> None:
        self._refuse_zero3(train, "LoRA weights")

    def penalty(self, stage: int, options: dict, previous=()):
        from promptcl.model.modeling import adapter_name

        if not previous:
            return None
        spec = EwcSpec.from_config(options["ewc"])
        folder = Path(previous[0])
        fisher = load_tensors(folder / FISHER_FILE)
        anchor = load_tensors(folder / WEIGHTS_FILE)
        adapter = adapter_name(stage)

        def penalty(model):
            return ewc_penalty(model, adapter, fisher, anchor, spec.lambda_)

        return penalty

    def finish(
        self, model, dataset, collator, stage, options, out_dir, precision="fp32", previous=()
    ):
        from promptcl.model.modeling import adapter_name

        spec = EwcSpec.from_config(options["ewc"])
        n = (
            len(dataset)
            if spec.fisher_examples is None
            else min(spec.fisher_examples, len(dataset))
        )
        examples = [dataset[i] for i in range(n)]
        new = diagonal_fisher(model, examples, collator, adapter_name(stage), precision)
        earlier = load_tensors(Path(previous[0]) / FISHER_FILE) if previous else None
        save_fisher(accumulate(earlier, new, spec.gamma), out_dir)
        total = float(sum(v.sum() for v in new.values()))
        return {"ewc": {"fisher_examples": n, "fisher_sum": total, "file": FISHER_FILE}}
