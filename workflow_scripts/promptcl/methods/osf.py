"""``osf``: orthogonal subspace fine-tuning through PEFT's own ``OSFConfig`` (``peft.tuners.osf``;
Nayak et al. 2025, "Sculpting Subspaces").

Stage k takes the SVD of each targeted weight of the state stage k-1 left, freezes its top
``effective_rank`` singular directions and trains the rest, whose gradients PEFT projects onto
the complement of the frozen directions (tensor hooks, so they hold under gradient
accumulation). The stage's adapter is PEFT's: the trained low-rank SVD factors ``U_low``,
``S_low``, ``V_low`` of every targeted weight, in a standard PEFT folder (``peft_type: OSF``).

What this means, as an adapter that is not a LoRA:

* **It continues across stages by merging.** Stage k starts from the base model with stages
  1..k-1 merged in order (``merge_and_unload``), wraps it in a new OSF adapter and trains. PEFT's
  continual-learning example calls ``unload()`` between tasks instead, which returns the weights
  *without* the task's update (docs/reference_differences.md).
* **A stage's adapter loads only onto its own starting weights**: the frozen factors are not
  saved but recomputed by SVD of the weights it is loaded onto. Loading a state
  (:func:`promptcl.model.modeling.load_state`: scoring, predictions, likelihoods) therefore
  merges the chain stage by stage in fp32 and rounds once to the compute precision.
* **Its size** is r·(out + in + 1) per targeted weight, r = min(out, in) - effective_rank: at
  PEFT's default (half the rank) about the size of the weights themselves, not of a LoRA.
* **vLLM cannot serve it** (vLLM takes LoRAs only): the DAG refuses ``generation.engine: vllm``.
* **Its learning rate is its own** (``osf.learning_rate``): the factors span half of each
  weight's spectrum, a full-rank parameterisation trained like full fine-tuning; at a LoRA's
  rate (the demo's 1e-3) it wrecks the model (docs/baselines.md). PEFT's example uses 5e-6.

**The preserved subspace under AdamW.** PEFT projects the factors' *gradients* (tensor hooks),
which keeps plain SGD's updates in the trainable subspace; AdamW's per-coordinate scaling of the
projected gradient does not (measured: the preserved directions move by ~1e-2 on a toy layer
after 20 steps, 1e-7 with SGD). So after every optimiser step the factors themselves are
projected back (:func:`project_factors`): U_low onto the complement of the frozen left singular
vectors, V_low onto that of the right ones. Then every preserved triplet (u, σ, v) of the
stage's starting weights stays one of the trained weights exactly (W'v = σu, uᵀW' = σvᵀ).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from promptcl.methods.base import Method, TrainingHooks, _base


def project_factors(model) -> None:
    """U_low ← (I − U_high U_highᵀ)·U_low and V_low ← V_low·(I − V_highᵀ V_high) in every OSF
    layer, from the frozen factors PEFT keeps (the complement is spanned by the initial low
    factors when the matrix is square in that dimension, as PEFT's gradient hook uses)."""
    import torch
    from peft.tuners.osf.layer import OSFLayer

    with torch.no_grad():
        for layer in (m for m in model.modules() if isinstance(m, OSFLayer)):
            for name, factors in layer.osf_svd_params.items():
                u, v = factors["U_low"], factors["V_low"]
                if name in layer._osf_U_high:
                    high = layer._osf_U_high[name]
                    u.sub_(high @ (high.T @ u))
                else:
                    low = layer._osf_U_low_init[name]
                    u.copy_(low @ (low.T @ u))
                if name in layer._osf_V_high:
                    high = layer._osf_V_high[name]
                    v.sub_((v @ high.T) @ high)
                else:
                    low = layer._osf_V_low_init[name]
                    v.copy_((v @ low.T) @ low)


def reprojection_callback():
    """:func:`project_factors` after every optimiser step."""
    from transformers import TrainerCallback

    class KeepPreservedSubspace(TrainerCallback):
        def on_step_end(self, args, state, control, model=None, **kwargs):
            project_factors(model)

    return KeepPreservedSubspace()


@dataclass(frozen=True)
class OsfSpec:
    """``config.yaml: osf``: the preserved rank (a fraction of each weight's smaller dimension
    in (0, 1), or a count >= 1) of stage k, the targeted modules (null: ``lora``'s) and the
    learning rate of its stages (null: ``training.learning_rate``)."""

    effective_rank: float | int
    target_modules: tuple[str, ...] | None
    learning_rate: float | None = None

    @classmethod
    def from_config(cls, cfg: dict, stage: int) -> OsfSpec:
        unknown = set(cfg) - {"effective_rank", "target_modules", "learning_rate"}
        if unknown:
            raise ValueError(f"osf: unknown keys {sorted(unknown)}")
        value = cfg["effective_rank"]
        if isinstance(value, (list, tuple)):
            if not value:
                raise ValueError("osf.effective_rank: empty list")
            value = value[min(stage, len(value)) - 1]  # a short list repeats its last value
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ValueError(f"osf.effective_rank: expected a number, got {value!r}")
        if isinstance(value, float) and not (0 < value < 1 or value.is_integer()):
            raise ValueError(
                f"osf.effective_rank: a fraction must lie in (0, 1), got {value} (stage {stage})"
            )
        if not math.isfinite(value) or value <= 0:
            raise ValueError(f"osf.effective_rank: expected a number > 0, got {value}")
        value = int(value) if value >= 1 else float(value)
        modules = cfg.get("target_modules")
        rate = cfg.get("learning_rate")
        if rate is not None and (isinstance(rate, bool) or not 0 < float(rate) < math.inf):
            raise ValueError(f"osf.learning_rate: expected a number > 0 or null, got {rate!r}")
        rate = None if rate is None else float(rate)
        return cls(value, None if modules is None else tuple(modules), rate)

    def peft_config(self):
        from peft import OSFConfig

        if not self.target_modules:
            raise ValueError("osf: no target modules (osf.target_modules or lora.target_modules)")
        modules = list(self.target_modules)
        return OSFConfig(effective_rank=self.effective_rank, target_modules=modules)


class OSF(Method):
    name = "osf"
    config_sections = ("osf",)

    def check_config(self, config: dict) -> None:
        cfg = config["osf"]
        ranks = cfg["effective_rank"]
        for stage in range(1, (len(ranks) if isinstance(ranks, list) else 1) + 1):
            OsfSpec.from_config(cfg, stage)
        if config["generation"]["engine"] == "vllm":
            raise ValueError(
                "runs.methods: osf's adapters are not LoRAs, which generation.engine: vllm "
                "serves; use generation.engine: transformers for runs with osf"
            )

    def check_launch(self, train) -> None:
        self._refuse_zero3(train, "weights whose gradients OSF projects (its tensor hooks)")

    def state_before(self, stage: int) -> list[int]:
        return list(range(1, stage))

    def state_after(self, stage: int) -> list[int]:
        return list(range(1, stage + 1))

    def training_overrides(self, options: dict) -> dict:
        rate = OsfSpec.from_config(options["osf"], 1).learning_rate
        return {} if rate is None else {"learning_rate": rate}

    def training_hooks(self, spec, model, tokenizer) -> TrainingHooks:
        osf = OsfSpec.from_config(spec.job.options["osf"], spec.stage)
        trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
        record = {
            "osf": {
                "effective_rank": osf.effective_rank,
                "trainable_parameters": trainable,
                # the frozen factors are re-derived by SVD of the weights the adapter loads onto
                "loads_onto": f"the base model with stages {self.state_before(spec.stage)} "
                "merged in order",
            }
        }
        return TrainingHooks(callbacks=[reprojection_callback()], record=record)

    def build_stage_model(self, spec, previous):
        osf = OsfSpec.from_config(spec.job.options["osf"], spec.stage)
        # by default the LoRA runs' modules, so a comparison adapts the same weights
        targets = osf.target_modules or tuple(spec.lora.target_modules)
        return self.build_model(
            spec.job.model_dir,
            previous,
            spec.lora,
            spec.stage,
            spec.precision,
            spec.job.model["trust_remote_code"],
            spec.seed[0],
            osf=OsfSpec(osf.effective_rank, targets, osf.learning_rate),
        )

    def build_model(
        self,
        model_dir,
        previous,
        lora,
        stage,
        precision="fp32",
        trust_remote_code=False,
        seed=0,
        osf: OsfSpec | None = None,
    ):
        """Stages 1..k-1 merged in order into the fp32 base (as ``load_state`` does), a new OSF
        adapter on top (``osf``: the schema's defaults on the LoRA's modules when None); the
        frozen weights then rounded to ``precision`` and the SVD factors kept in fp32
        (autocast computes in ``precision``), as a LoRA's are."""
        from peft import get_peft_model

        from promptcl.model.devices import torch_dtype
        from promptcl.model.modeling import adapter_name, merge_chain

        self._check_previous(stage, previous)
        if osf is None:  # the schema's defaults, on the LoRA's modules
            from promptcl.train.specs import schema_defaults

            default = OsfSpec.from_config(schema_defaults("osf"), stage)
            osf = OsfSpec(default.effective_rank, tuple(lora.target_modules), default.learning_rate)
        base = merge_chain(_base(model_dir, "fp32", trust_remote_code, seed), previous)
        model = get_peft_model(base, osf.peft_config(), adapter_name=adapter_name(stage))
        dtype = torch_dtype(precision)
        for name, param in model.named_parameters():
            if "osf_svd_params" not in name:
                param.data = param.data.to(dtype)
        return model
