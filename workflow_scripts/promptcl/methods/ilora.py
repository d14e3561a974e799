"""``ilora``: interpolation-based LoRA (Ren et al. 2024, "Analyzing and Reducing Catastrophic
Forgetting in Parameter Efficient Tuning"), after the authors' public code (which47/LLMCL,
``method/ILORA.py``; the differences are listed in docs/reference_differences.md).

Two LoRAs on the same modules, both continued across stages:

* the **fast** learner (the stage's adapter, ``stage_k``) trains on the current task and on a
  buffer batch of earlier tasks' examples, as large as the current micro-batch;
* the **slow** learner (adapter ``slow``, frozen) follows it after every optimiser update as an
  exponential moving average of its parameters (A and B apart: a parameter interpolation),

      θ_slow ← β_t·θ_slow + (1 − β_t)·θ_fast,   β_t = min(1 − 1/(t + 1), ilora.ema),

  where t is the stage's update count;
* on the buffer batch, a **consistency** term pulls the fast learner's hidden states (the
  embeddings' and every layer's, on the real tokens) up to the slow learner's wherever they
  are lower: mean of (max(h_fast, h_slow) − h_fast)², i.e. of relu(h_slow − h_fast)².

Each micro-batch's loss is CE(current) + CE(buffer) + 2·ilora.consistency_weight·consistency:
the authors' (CE(current) + CE(buffer)) / 2 + weight·consistency times 2, which AdamW follows
with the same updates up to its ε and gradient clipping. The buffer holds ``ilora.buffer_size``
examples split evenly over the earlier tasks (replay's buffers, each example with the prompt
its own stage trained with); stage 1 has no earlier task, so it trains the fast learner on its
task alone and the slow one follows. As in the authors' code the fast learner is the stage's
adapter, which later stages score on and evaluation loads; the slow learner is saved beside it
(``slow/`` in the stage's adapter folder, a standard PEFT folder) and continues at the next
stage.
"""

from __future__ import annotations

import json
import logging
import math
import zlib
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from promptcl.methods.base import TrainingHooks, _base
from promptcl.methods.ewc import lora_parameters
from promptcl.methods.replay import ReplaySpec, memory_examples, seeded_rows
from promptcl.methods.seqlora import SeqLoRA

if TYPE_CHECKING:
    import torch

log = logging.getLogger(__name__)

SLOW = "slow"  # the slow learner's adapter name, and its subfolder in a stage's adapter folder
SLOW_STATE_FILE = "ilora_slow.safetensors"  # the slow learner in a checkpoint


@dataclass(frozen=True)
class IloraSpec:
    """``config.yaml: ilora``: the buffer size, the EMA rate β and the consistency weight."""

    buffer_size: int
    ema: float
    consistency_weight: float

    @classmethod
    def from_config(cls, cfg: dict) -> IloraSpec:
        unknown = set(cfg) - {"buffer_size", "ema", "consistency_weight"}
        if unknown:
            raise ValueError(f"ilora: unknown keys {sorted(unknown)}")
        size, ema, weight = cfg["buffer_size"], cfg["ema"], cfg["consistency_weight"]
        if isinstance(size, bool) or not isinstance(size, int) or size < 1:
            raise ValueError(f"ilora.buffer_size: expected an integer >= 1, got {size!r}")
        if isinstance(ema, bool) or not isinstance(ema, (int, float)) or not 0 <= ema < 1:
            raise ValueError(f"ilora.ema: expected a number in [0, 1), got {ema!r}")
        if isinstance(weight, bool) or not isinstance(weight, (int, float)):
            raise ValueError(f"ilora.consistency_weight: expected a number, got {weight!r}")
        if not math.isfinite(weight) or weight < 0:
            raise ValueError(f"ilora.consistency_weight: expected a number >= 0, got {weight}")
        return cls(int(size), float(ema), float(weight))

    def rate(self, step: int) -> float:
        """β_t after update ``step`` (1-based)."""
        return min(1 - 1 / (step + 1), self.ema)


def ema_update(model, fast: str, slow: str, beta: float) -> None:
    """θ_slow ← β·θ_slow + (1 − β)·θ_fast, parameter by parameter, without gradients."""
    import torch

    fast_params, slow_params = lora_parameters(model, fast), lora_parameters(model, slow)
    if fast_params.keys() != slow_params.keys():
        raise ValueError(f"adapters '{fast}' and '{slow}' do not wrap the same modules")
    with torch.no_grad():
        for key, param in slow_params.items():
            param.mul_(beta).add_(fast_params[key].to(param.dtype), alpha=1 - beta)


@contextmanager
def slow_learner(model, fast: str):
    """The model computing with the slow learner instead of the fast one. Only the fast one is
    active otherwise, so the slow one costs nothing (nor draws dropout masks) in the task's
    forward passes; the active adapter is switched per LoRA layer, which leaves every
    parameter's ``requires_grad`` as it is (PEFT's ``set_adapter`` would make the slow one
    trainable)."""
    from peft.tuners.lora import LoraLayer

    layers = [m for m in model.modules() if isinstance(m, LoraLayer) and SLOW in m.scaling]
    if not layers:
        raise ValueError(f"no LoRA layer holds the slow learner '{SLOW}'")
    saved = [m._active_adapter for m in layers]
    try:
        for m in layers:
            m._active_adapter = [SLOW]
        yield model
    finally:
        for m, active in zip(layers, saved, strict=True):
            m._active_adapter = active


def consistency(fast: tuple, slow: tuple, mask: torch.Tensor) -> torch.Tensor:
    """Mean over hidden states, real tokens and dimensions of (max(h_fast, h_slow) − h_fast)²,
    in float32 (the authors' one-sided target)."""
    import torch

    keep = mask.bool()
    terms = []
    for f, s in zip(fast, slow, strict=True):
        f, s = f[keep].float(), s[keep].float()
        terms.append((torch.maximum(f, s.detach()) - f).pow(2).reshape(-1))
    return torch.cat(terms).mean()


def buffer_term(buffer: list[dict], spec: IloraSpec, collate, seed, fast: str):
    """The loss term of each micro-batch (see the module docstring)."""
    import torch

    def term(model, inputs, outputs):
        # seeded by the batch's tokens: a resumed job pairs each batch with the same rows
        ids = inputs["input_ids"]
        key = zlib.crc32(ids.detach().cpu().numpy().tobytes())
        rows = seeded_rows(len(buffer), len(ids), *seed, key)
        batch = collate([buffer[i] for i in rows])
        device = inputs["input_ids"].device
        batch = {k: v.to(device) for k, v in batch.items()}
        plastic = model(**batch, output_hidden_states=True)  # the fast learner
        with torch.no_grad(), slow_learner(model, fast):
            stable = model(
                **{k: v for k, v in batch.items() if k != "labels"}, output_hidden_states=True
            )
        value = consistency(plastic.hidden_states, stable.hidden_states, batch["attention_mask"])
        total = plastic.loss + 2 * spec.consistency_weight * value
        return total, {
            "buffer_loss": float(plastic.loss.detach()),
            "consistency": float(value.detach()),
        }

    return term


def ema_callback(spec: IloraSpec, fast: str):
    """Moves the slow learner after each optimiser update; saves it into every checkpoint."""
    from safetensors.torch import save_file
    from transformers import TrainerCallback

    from promptcl.train.callbacks import checkpoint_dir

    class SlowLearner(TrainerCallback):
        def on_step_end(self, args, state, control, model=None, **kwargs):
            ema_update(model, fast, SLOW, spec.rate(state.global_step))

        def on_save(self, args, state, control, model=None, **kwargs):
            folder = checkpoint_dir(args, state)
            if folder.is_dir():
                tensors = {
                    k: p.detach().cpu().contiguous()
                    for k, p in lora_parameters(model, SLOW).items()
                }
                save_file(tensors, str(folder / SLOW_STATE_FILE))

    return SlowLearner()


class ILoRA(SeqLoRA):
    name = "ilora"
    config_sections = ("ilora",)

    def check_config(self, config: dict) -> None:
        IloraSpec.from_config(config["ilora"])

    def shares_first_stage(self, config: dict) -> bool:
        return False  # stage 1 also makes the slow learner, saved beside the adapter

    def replayed_stages(self, stage: int) -> list[int]:
        return list(range(1, stage))  # the buffer: samples of every earlier task

    def check_launch(self, train) -> None:
        self._refuse_zero3(train, "LoRA weights")

    def build_model(
        self, model_dir, previous, lora, stage, precision="fp32", trust_remote_code=False, seed=0
    ):
        """The fast learner (seqlora's LoRA: new at stage 1, else continued), active and the
        only one trained, and the slow one (a copy of the fast learner's initial weights at
        stage 1, else the last stage's), frozen and used in :func:`slow_learner` only."""
        from promptcl.model.adapters import continued_lora, new_lora, train_only
        from promptcl.model.modeling import adapter_name
        from promptcl.store.integrity import verify_dir

        self._check_previous(stage, previous)
        base = _base(model_dir, precision, trust_remote_code, seed)
        fast = adapter_name(stage)
        if previous:
            model = continued_lora(base, previous[0], stage)
            verify_dir(previous[0])
            model.load_adapter(str(Path(previous[0]) / SLOW), adapter_name=SLOW)
        else:
            model = new_lora(base, lora, stage)
            model.add_adapter(SLOW, lora.peft_config())
            ema_update(model, fast, SLOW, 0.0)  # the slow learner starts as the fast one
        model.base_model.set_adapter(fast)  # the slow learner computes in slow_learner only
        return train_only(model, fast)

    def training_hooks(self, spec, model, tokenizer) -> TrainingHooks:
        from promptcl.model.batching import PadCollator
        from promptcl.model.modeling import adapter_name
        from promptcl.train.callbacks import resumed_file

        options = IloraSpec.from_config(spec.job.options["ilora"])
        fast = adapter_name(spec.stage)
        saved = resumed_file(spec.state_dir, SLOW_STATE_FILE)
        if saved:
            _load_slow(model, saved)
        record = {"ilora": {"ema": options.ema, "consistency_weight": options.consistency_weight}}
        hooks = TrainingHooks(callbacks=[ema_callback(options, fast)], record=record)
        if not any(c["role"] == "replay" for c in spec.job.companions):
            return hooks
        buffer_spec = ReplaySpec(examples=options.buffer_size)
        records, buffer = memory_examples(buffer_spec, spec, tokenizer, 0)
        log.info("I-LoRA buffer: %d examples", len(buffer))
        record["ilora"]["buffer"] = records
        if buffer:
            collate = PadCollator(tokenizer.pad_token_id, left=True)
            hooks.loss_term = buffer_term(buffer, options, collate, spec.seed, fast)
        return hooks

    def finish(
        self, model, dataset, collator, stage, options, out_dir, precision="fp32", previous=()
    ):
        """The slow learner as a PEFT folder ``slow/`` beside the stage's (fast) adapter."""
        from promptcl.model.adapters import save_adapter

        base = json.loads((Path(out_dir) / "adapter_config.json").read_text())
        save_adapter(model, SLOW, Path(out_dir) / SLOW, base["base_model_name_or_path"])
        return {"ilora_slow": SLOW}


def _load_slow(model, path: Path) -> None:
    import torch
    from safetensors.torch import load_file

    saved = load_file(str(path))
    with torch.no_grad():
        for key, param in lora_parameters(model, SLOW).items():
            param.copy_(saved[key].to(param.dtype))
    log.warning("resumed the slow learner from %s", path)
