"""``agem``: averaged gradient episodic memory (Chaudhry et al. 2019, "Efficient Lifelong
Learning with A-GEM") on one LoRA continued across stages (seqlora's setting, as replay's and
EWC's: forgetting happens in the weights that keep training).

**Memory.** Each earlier task keeps ``agem.memory_per_task`` of its training examples, sampled
once as replay's buffers are (the prefix of one seeded permutation, each example with the prompt
its own stage trained with). They are never trained on.

**Projection.** Once per optimiser update, after the update's micro-batches have accumulated its
gradient g (and after gradient clipping), a reference gradient g_ref is computed on
``agem.reference_examples`` examples drawn from the whole memory (seeded by run seed, stage and
update, as are its dropout masks, so a resumed job and every DDP rank compute the same), and the
update is projected when it conflicts:

    g ← g − (gᵀg_ref / g_refᵀg_ref) · g_ref    if gᵀg_ref < 0, else unchanged,

with the dot products taken over all the trainable LoRA parameters as one vector (as the paper
flattens the network), in float64. Projection never lengthens g, so the clipped bound still holds.

**Accumulation and distribution.** The projection acts on the whole update, not on a micro-batch,
so it is exact for any ``training.grad_accum``. Under DDP every rank draws the same memory batch
and holds the same averaged g, so every rank computes the same projection without communicating.
g_ref is taken with ``torch.autograd.grad`` and never touches ``.grad`` (nor DDP's gradient
hooks). DeepSpeed (any ZeRO stage) keeps the update's gradient in its own buffers, outside the
Trainer's pre-optimiser-step callback, where it cannot be projected exactly: refused.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

from promptcl.methods.base import TrainingHooks
from promptcl.methods.replay import ReplaySpec, memory_examples, seeded_rows
from promptcl.methods.seqlora import SeqLoRA

if TYPE_CHECKING:
    import torch

log = logging.getLogger(__name__)

STATE_FILE = "agem_state.json"


@dataclass(frozen=True)
class AgemSpec:
    """``config.yaml: agem``: examples kept per earlier task, examples per reference gradient."""

    memory_per_task: int
    reference_examples: int

    @classmethod
    def from_config(cls, cfg: dict) -> AgemSpec:
        unknown = set(cfg) - {"memory_per_task", "reference_examples"}
        if unknown:
            raise ValueError(f"agem: unknown keys {sorted(unknown)}")
        out = {}
        for key in ("memory_per_task", "reference_examples"):
            value = cfg[key]
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"agem.{key}: expected an integer >= 1, got {value!r}")
            out[key] = value
        return cls(**out)

    def memory(self, earlier: int) -> ReplaySpec:
        """Replay's buffer rule with ``memory_per_task`` from each of ``earlier`` tasks."""
        return ReplaySpec(
            examples=self.memory_per_task * earlier, max_per_task=self.memory_per_task
        )


def project(grads: list[torch.Tensor], reference: list[torch.Tensor]) -> tuple[bool, float]:
    """A-GEM's rule on ``grads`` in place: (whether it projected, gᵀg_ref).

    ``grads``/``reference``: the same parameters' tensors; the dot products are over all of them
    as one vector, in float64."""
    import torch

    dot = sum(torch.sum(g.double() * r.double()) for g, r in zip(grads, reference, strict=True))
    dot = float(dot)
    if dot >= 0:
        return False, dot
    norm = float(sum(torch.sum(r.double() ** 2) for r in reference))
    if norm == 0:
        return False, dot
    scale = dot / norm
    for g, r in zip(grads, reference, strict=True):
        g.sub_((scale * r.double()).to(g.dtype))
    return True, dot


def reference_gradient(
    model,
    params: list,
    examples: list[dict],
    collate,
    batch_size: int,
    bf16: bool,
    seed: tuple[int, ...] = (0,),
) -> list[torch.Tensor]:
    """The gradient of the mean answer-token loss over ``examples`` w.r.t. ``params``, in
    micro-batches of ``batch_size``, under the training's autocast; ``.grad`` is left alone.

    The model stays in train mode (dropout on, as for the update's own gradient), with the
    random state forked and seeded by ``seed``: every DDP rank, and a resumed job, draws the
    same dropout masks, so every rank computes the same g_ref."""
    import torch

    device = next(model.parameters()).device
    devices = [device] if device.type == "cuda" else []
    with torch.random.fork_rng(devices=devices):
        torch.manual_seed(int(np.random.SeedSequence(list(seed)).generate_state(1)[0]))
        return _reference_gradient(model, params, examples, collate, batch_size, bf16)


def _reference_gradient(model, params, examples, collate, batch_size, bf16):
    import torch

    from promptcl.prompts.prompting import IGNORE_INDEX

    device = next(model.parameters()).device
    batches = [collate(examples[i : i + batch_size]) for i in range(0, len(examples), batch_size)]
    counts = [int((b["labels"][:, 1:] != IGNORE_INDEX).sum()) for b in batches]
    total = sum(counts)
    out = [torch.zeros_like(p, dtype=torch.float32) for p in params]
    if total == 0:
        return out
    for batch, count in zip(batches, counts, strict=True):
        if count == 0:
            continue
        batch = {k: v.to(device) if hasattr(v, "to") else v for k, v in batch.items()}
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=bf16):
            loss = model(**batch).loss * (count / total)
        grads = torch.autograd.grad(loss, params, allow_unused=True)
        for acc, g in zip(out, grads, strict=True):
            if g is not None:
                acc.add_(g.float())
    return out


def projection_callback(memory: list[dict], spec: AgemSpec, collate, seed, stats: dict):
    """A ``TrainerCallback`` that projects each update's gradient before the optimiser step and
    counts the updates and projections into ``stats`` (saved in every checkpoint)."""
    from transformers import TrainerCallback

    from promptcl.train.callbacks import checkpoint_dir

    class AgemProjection(TrainerCallback):
        def on_pre_optimizer_step(self, args, state, control, model=None, **kwargs):
            params = [p for p in model.parameters() if p.requires_grad and p.grad is not None]
            rows = seeded_rows(len(memory), spec.reference_examples, *seed, state.global_step)
            reference = reference_gradient(
                model,
                params,
                [memory[i] for i in rows],
                collate,
                args.per_device_train_batch_size,
                args.bf16,
                (seed[0], seed[1], state.global_step),
            )
            projected, dot = project([p.grad for p in params], reference)
            stats["updates"] += 1
            stats["projected"] += int(projected)
            verdict = "projected" if projected else "kept"
            log.info("A-GEM update %d: g.g_ref = %.9g, %s", state.global_step + 1, dot, verdict)

        def on_save(self, args, state, control, **kwargs):
            folder = checkpoint_dir(args, state)
            if folder.is_dir():
                (folder / STATE_FILE).write_text(json.dumps(stats))

    return AgemProjection()


class AGEM(SeqLoRA):
    name = "agem"
    config_sections = ("agem",)

    def check_config(self, config: dict) -> None:
        AgemSpec.from_config(config["agem"])

    def shares_first_stage(self, config: dict) -> bool:
        return True  # no memory yet: seqlora's (IncLoRA's) stage 1

    def replayed_stages(self, stage: int) -> list[int]:
        return list(range(1, stage))  # the memory: samples of every earlier task

    def check_launch(self, train) -> None:
        if train.deepspeed:
            raise ValueError(
                f"training.deepspeed: {train.deepspeed}: A-GEM projects each update's whole "
                "gradient before the optimiser step, which DeepSpeed keeps in its own buffers "
                "out of reach; train agem without DeepSpeed (DDP projects exactly)"
            )

    def training_hooks(self, spec, model, tokenizer) -> TrainingHooks:
        from promptcl.model.batching import PadCollator
        from promptcl.train.callbacks import resumed_file

        options = AgemSpec.from_config(spec.job.options["agem"])
        earlier = sum(c["role"] == "replay" for c in spec.job.companions)
        if not earlier:
            return TrainingHooks()
        records, memory = memory_examples(options.memory(earlier), spec, tokenizer, 0)
        stats = {"updates": 0, "projected": 0}
        saved = resumed_file(spec.state_dir, STATE_FILE)
        if saved:
            stats.update(json.loads(saved.read_text()))
        log.info("A-GEM memory: %d examples of %d earlier task(s)", len(memory), earlier)
        collate = PadCollator(tokenizer.pad_token_id, left=True)
        callback = projection_callback(memory, options, collate, spec.seed, stats)
        record = {
            "agem": {
                "memory": records,
                "reference_examples": options.reference_examples,
                "steps": stats,  # filled in while training
            }
        }
        return TrainingHooks(callbacks=[callback], record=record)
