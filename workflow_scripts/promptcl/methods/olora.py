"""O-LoRA's regulariser (Wang et al. 2023, "Orthogonal Subspace Learning for Language Model
Continual Learning").

While stage k trains its LoRA, the penalty

    λ1 · Σ_modules Σ_{j<k} Σ |A_j · A_kᵀ|   +   λ2 · Σ_modules (‖A_k‖₂ + ‖B_k‖₂)

pushes the rows of the new A (the subspace the new LoRA reads its input from) to be orthogonal
to every earlier stage's A, so the new update interferes less with what earlier LoRAs learned;
the second term is a plain Frobenius-norm shrinkage of the new LoRA (norm, not squared, as in the
reference code). Earlier adapters are constants here: they are frozen in a stage model and are
also detached below, so the penalty can only move the new adapter.

Gradient accumulation: the optimiser step must see exactly ONE penalty per update, whatever the
number of micro-batches. The reference implementation adds the penalty after dividing the task
loss by the accumulation steps, so outside DeepSpeed it counts it once per micro-batch (too strong
by the accumulation factor). :func:`penalty_divisor` mirrors how the installed Trainer scales the
loss returned by ``compute_loss``; :class:`OLoraTrainerMixin` uses it.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

from promptcl.methods.inclora import IncLoRA

if TYPE_CHECKING:
    import torch

PenaltyParts = dict[str, float]


@dataclass(frozen=True)
class OLoraSpec:
    """``config.yaml: olora``: weights of the orthogonality (λ1) and L2 (λ2) terms."""

    lambda1: float = 0.5
    lambda2: float = 0.0

    @classmethod
    def from_config(cls, cfg: dict, stage: int | None = None) -> OLoraSpec:
        """Read ``lambda1``/``lambda2``; a list gives per-stage values (stage k → list[k-1]).

        A list shorter than the sequence repeats its last value, so ``[0.5, 0.1]`` means 0.5 for
        stage 1 and 0.1 for every later stage. Lists need ``stage``.
        """
        unknown = set(cfg) - {"lambda1", "lambda2"}
        if unknown:
            raise ValueError(f"olora: unknown keys {sorted(unknown)}")
        return cls(
            lambda1=_stage_value(cfg, "lambda1", cls.lambda1, stage),
            lambda2=_stage_value(cfg, "lambda2", cls.lambda2, stage),
        )


def for_stage(cfg: dict, stage: int) -> OLoraSpec:
    """The O-LoRA weights that apply to ``stage`` (1-based)."""
    return OLoraSpec.from_config(cfg, stage)


def _stage_value(cfg: dict, key: str, default: float, stage: int | None) -> float:
    value = cfg.get(key, default)
    if isinstance(value, (list, tuple)):
        if not value:
            raise ValueError(f"olora.{key}: empty list")
        if stage is None:
            raise ValueError(f"olora.{key}: a per-stage list needs the stage number")
        if stage < 1:
            raise ValueError(f"olora.{key}: stages are numbered from 1, got {stage}")
        value = value[min(stage, len(value)) - 1]
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ValueError(f"olora.{key}: expected a number, got {value!r}")
    value = float(value)
    if not math.isfinite(value) or value < 0:
        raise ValueError(f"olora.{key}: expected a finite number >= 0, got {value}")
    return value


# --- reading the LoRA matrices --------------------------------------------------------------------


def _lora_a(layer, name: str) -> torch.Tensor | None:
    """A as (r, in): Linear/Conv LoRAs keep a module, embedding LoRAs a bare parameter."""
    if name in layer.lora_A:
        weight = layer.lora_A[name].weight
    elif name in getattr(layer, "lora_embedding_A", {}):
        weight = layer.lora_embedding_A[name]
    else:
        return None
    return weight if weight.ndim == 2 else weight.reshape(weight.shape[0], -1)


def _lora_b(layer, name: str) -> torch.Tensor:
    if name in layer.lora_B:
        return layer.lora_B[name].weight
    return layer.lora_embedding_B[name]


def lora_pairs(
    model, new: str, previous: Sequence[str]
) -> list[tuple[torch.Tensor, list[torch.Tensor], torch.Tensor]]:
    """Per LoRA-wrapped module holding ``new``: (A_new, [A_prev for each earlier adapter], B_new).

    The tensors are the live parameters (conv A flattened to 2-D), so a loss built from them
    back-propagates into the model. Raises if ``new`` or an earlier adapter wraps no module at
    all: a misspelt or unloaded adapter would otherwise silently give a zero penalty.
    """
    from peft.tuners.lora import LoraLayer

    if new in previous:
        raise ValueError(f"adapter '{new}' is both the new and an earlier adapter")
    pairs = []
    seen: set[str] = set()
    for module in model.modules():
        if not isinstance(module, LoraLayer):
            continue
        prev = []
        for name in previous:
            a_prev = _lora_a(module, name)
            if a_prev is not None:
                prev.append(a_prev)
                seen.add(name)
        a_new = _lora_a(module, new)
        if a_new is None:
            continue
        b_new = _lora_b(module, new)
        for weight in (a_new, b_new, *prev):
            if weight.numel() == 0:
                # DeepSpeed ZeRO-3 leaves only a placeholder outside the module's forward.
                raise RuntimeError(
                    "O-LoRA: a LoRA weight is empty (parameters partitioned, e.g. DeepSpeed "
                    "ZeRO-3); use ZeRO stage 0-2"
                )
        pairs.append((a_new, prev, b_new))
    if not pairs:
        raise ValueError(f"adapter '{new}' wraps no module of this model")
    missing = [name for name in previous if name not in seen]
    if missing:
        raise ValueError(f"earlier adapters {missing} wrap no module of this model")
    return pairs


# --- the penalty ----------------------------------------------------------------------------------


def orthogonality_penalty(
    model, new: str, previous: Sequence[str], spec: OLoraSpec
) -> tuple[torch.Tensor, PenaltyParts]:
    """(λ1·orthogonal + λ2·l2 as a float32 scalar, unweighted parts for logging).

    Gradients reach only the new adapter: earlier A matrices are detached. Terms whose weight
    is 0 stay out of the graph; with no earlier adapters and λ2 = 0 the penalty is an exact,
    grad-free zero. Computed in float32 outside autocast so bf16 training does not round it.
    """
    import torch

    pairs = lora_pairs(model, new, previous)
    device = pairs[0][0].device
    orthogonal: list[torch.Tensor] = []
    l2: list[torch.Tensor] = []
    with torch.autocast(device_type=device.type, enabled=False):
        for a_new, a_prevs, b_new in pairs:
            a = a_new.float()
            for a_prev in a_prevs:
                a_old = a_prev.detach().to(device=a.device, dtype=torch.float32)
                orthogonal.append((a_old @ a.T).abs().sum().to(device))
            norms = torch.linalg.vector_norm(a) + torch.linalg.vector_norm(b_new.float())
            l2.append(norms.to(device))
    orthogonal_sum = torch.stack(orthogonal).sum() if orthogonal else None
    l2_sum = torch.stack(l2).sum()
    penalty = torch.zeros((), device=device, dtype=torch.float32)
    if spec.lambda1 and orthogonal_sum is not None:
        penalty = penalty + spec.lambda1 * orthogonal_sum
    if spec.lambda2:
        penalty = penalty + spec.lambda2 * l2_sum
    parts = {
        "orthogonal": float(orthogonal_sum.detach()) if orthogonal_sum is not None else 0.0,
        "l2": float(l2_sum.detach()),
    }
    return penalty, parts


def add_penalty(
    loss: torch.Tensor,
    model,
    new: str,
    previous: Sequence[str],
    spec: OLoraSpec,
    grad_accum: int,
) -> tuple[torch.Tensor, PenaltyParts]:
    """``loss + penalty / grad_accum``: the micro-batch loss with its share of the penalty.

    Gradients of the ``grad_accum`` micro-batches of one update are summed, and each task loss
    already carries 1/grad_accum of the update's loss (the Trainer either normalises the token
    loss by the whole window's token count or divides each micro-batch loss by the number of
    micro-batches). Adding penalty/grad_accum per micro-batch therefore gives exactly one penalty
    per optimiser step. Pass ``grad_accum=1`` when the caller divides the returned loss itself
    (see :func:`penalty_divisor`), and the number of micro-batches of the *current* update, which
    is smaller for the last update of an epoch.
    """
    if grad_accum < 1:
        raise ValueError(f"grad_accum must be >= 1, got {grad_accum}")
    penalty, parts = orthogonality_penalty(model, new, previous, spec)
    return loss + penalty / grad_accum, parts


class OLoRA(IncLoRA):
    """``olora``: IncLoRA + the orthogonality penalty (config section ``olora``)."""

    name = "olora"
    config_sections = ("olora",)

    def check_config(self, config: dict) -> None:
        cfg = config["olora"]
        lists = [len(v) for v in cfg.values() if isinstance(v, (list, tuple))]
        for stage in range(1, max([1, *lists]) + 1):  # every value of a per-stage list
            OLoraSpec.from_config(cfg, stage)

    def shares_first_stage(self, config: dict) -> bool:
        # no earlier LoRA to be orthogonal to: only lambda2 (the new LoRA's norm) acts at stage 1
        return OLoraSpec.from_config(config["olora"], 1).lambda2 == 0

    def check_launch(self, train) -> None:
        self._refuse_zero3(train, "LoRA A matrices")

    def penalty(self, stage: int, options: dict, previous=()):
        from promptcl.model.modeling import adapter_name

        spec = OLoraSpec.from_config(options["olora"], stage)
        new, earlier = adapter_name(stage), [adapter_name(i) for i in range(1, stage)]

        def penalty(model):
            return orthogonality_penalty(model, new, earlier, spec)

        return penalty
