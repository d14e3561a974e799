"""Fitting a stage's trainable LoRA with the Hugging Face Trainer: resumable from the newest
checkpoint in an undeclared state folder, stopped cleanly by SIGTERM/SIGUSR1, with an optional
weight penalty that every optimiser update sees exactly once whatever the gradient accumulation.
The Trainer supplies accumulation, bf16 autocast, DeepSpeed and DDP.
"""

from __future__ import annotations

import json
import logging
import math
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

import pandas as pd
import torch

from promptcl.model.adapters import trainable_adapter
from promptcl.model.batching import LengthGroupedSampler, batch_tokens, collator, crop_to_answers
from promptcl.prompts.prompting import IGNORE_INDEX
from promptcl.train.data import epoch_tracker
from promptcl.train.launch import TrainingInterrupted, preemption_guard, world_size
from promptcl.train.specs import TrainSpec, accumulation_steps

log = logging.getLogger(__name__)

#: ``logits_to_keep`` as position indices (see :func:`promptcl.model.batching.last_positions`);
#: False
#: restores the earlier int slicing for the A/B of benchmarks/model_throughput.py
LOGITS_AS_INDICES = True

#: model -> (penalty as a scalar tensor, its parts as floats for the training log)
Penalty = Callable[[object], tuple[torch.Tensor, dict[str, float]]]
#: (model, inputs, outputs) -> (a micro-batch's extra loss term, its parts for the log)
LossTerm = Callable[[object, dict, object], tuple[torch.Tensor, dict[str, float]]]


def _stage_arguments_class():
    """TrainingArguments whose warm-up is a ratio over its whole range [0, 1].

    transformers 5 reads ``warmup_steps`` < 1 as a ratio and >= 1 as steps, so a ratio of 1.0
    (warm up over the whole stage) would become a single step.
    """
    from dataclasses import dataclass as _dataclass

    from transformers import TrainingArguments

    @_dataclass
    class StageArguments(TrainingArguments):
        warmup_ratio: float = 0.0

        def get_warmup_steps(self, num_training_steps: int) -> int:
            return math.ceil(num_training_steps * self.warmup_ratio)

    return StageArguments


class StageTrainerMixin:
    """What a stage's Trainer adds to transformers' (see :func:`_make_trainer_class`): it
    checkpoints only the stage's own LoRA, logs token counts and adds a method's weight penalty
    once per optimiser update (logged apart from the task loss).

    The stock PEFT resume path re-activates a single adapter, which would silently drop the
    frozen earlier stages from the forward pass; here they stay active.
    """

    def __init__(
        self,
        *args,
        adapter: str,
        penalty: Penalty | None = None,
        loss_term: LossTerm | None = None,
        length_window: int = 0,
        **kwargs,
    ):
        super().__init__(*args, **kwargs)
        self.length_window = length_window
        self.adapter = adapter
        self.penalty = penalty
        self.loss_term = loss_term
        self._tokens = 0
        self._answer_tokens = 0
        self._penalties: list[dict[str, float]] = []
        self._t0 = time.perf_counter()

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        self._tokens += batch_tokens(inputs)
        self._answer_tokens += int((inputs["labels"] != IGNORE_INDEX).sum())
        # project to the vocabulary only where labels exist: the loss is the same, and the
        # full projection and its log-softmax were a third of a step's time
        inputs = crop_to_answers(inputs, indices=LOGITS_AS_INDICES)
        term = self.loss_term if model.training else None
        loss, outputs = super().compute_loss(model, inputs, True, num_items_in_batch)
        if (self.penalty is None and term is None) or not model.training:
            return (loss, outputs) if return_outputs else loss
        # one penalty per optimiser update, whichever way the Trainer scales the task loss;
        # a per-batch term is scaled like the task loss it is added to
        steps = penalty_divisor(self, num_items_in_batch)
        if self.penalty is not None:
            value, parts = self.penalty(self.model)
        else:
            value, parts = term(model, inputs, outputs)
        self._penalties.append({"penalty": float(value), **parts})
        total = loss + value / steps
        return (total, outputs) if return_outputs else total

    def log(self, logs: dict[str, float], start_time: float | None = None) -> None:
        if "loss" in logs:
            logs["tokens"] = self._tokens
            logs["answer_tokens"] = self._answer_tokens
            logs["elapsed_s"] = round(time.perf_counter() - self._t0, 3)
            self._tokens = self._answer_tokens = 0
            if self._penalties:
                for key in self._penalties[0]:
                    logs[key] = sum(p[key] for p in self._penalties) / len(self._penalties)
                logs["task_loss"] = logs["loss"] - logs["penalty"]
                self._penalties = []
        super().log(logs, start_time)

    def _save(self, output_dir: str | None = None, state_dict: dict | None = None) -> None:
        output_dir = output_dir or self.args.output_dir
        if self.args.should_save:
            self.model.save_pretrained(
                output_dir, state_dict=state_dict, selected_adapters=[self.adapter]
            )

    def _get_train_sampler(self, train_dataset=None):
        """Length-grouped windows (``training.length_grouping``), else the Trainer's own
        seeded random sampler. Lengths are those of the dataset as built (a PAFT example's
        epoch-0 prompt), the same in a fresh and a resumed job."""
        if not self.length_window:
            return super()._get_train_sampler(train_dataset)
        dataset = train_dataset if train_dataset is not None else self.train_dataset
        lengths = [len(dataset[i]["input_ids"]) for i in range(len(dataset))]
        return LengthGroupedSampler(lengths, self.length_window, self.args.data_seed)

    def _load_from_checkpoint(self, resume_from_checkpoint: str, model=None) -> None:
        from peft import set_peft_model_state_dict
        from safetensors.torch import load_file

        model = model or self.model
        path = Path(resume_from_checkpoint) / self.adapter / "adapter_model.safetensors"
        if not path.is_file():
            path = Path(resume_from_checkpoint) / "adapter_model.safetensors"
        set_peft_model_state_dict(model, load_file(str(path)), adapter_name=self.adapter)
        log.warning("resumed stage adapter weights from %s", resume_from_checkpoint)


def _make_trainer_class():
    """The Hugging Face Trainer with :class:`StageTrainerMixin` (transformers imported here,
    in the stage job only)."""
    from transformers import Trainer

    class StageTrainer(StageTrainerMixin, Trainer):
        """A stage's Trainer (see :class:`StageTrainerMixin`)."""

    return StageTrainer


def latest_checkpoint(state_dir: Path) -> str | None:
    from transformers.trainer_utils import get_last_checkpoint

    if not state_dir.is_dir():
        return None
    return get_last_checkpoint(str(state_dir))


@dataclass
class StageResult:
    log: pd.DataFrame
    info: dict
    # the full weights when DeepSpeed ZeRO-3 sharded them (gathered on every rank), else None
    state_dict: dict | None = None


def fit(
    model,
    tokenizer,
    examples,
    spec: TrainSpec,
    state_dir: Path,
    callbacks: Sequence = (),
    penalty: Penalty | None = None,
    guard=None,
    loss_term: LossTerm | None = None,
) -> StageResult:
    """Train the single trainable adapter, resuming from the newest checkpoint in ``state_dir``:
    set up the Trainer → train (stopped by a signal: checkpoint and raise) → collect the result.

    ``guard``: a :func:`~promptcl.train.launch.preemption_guard` the caller installed early (and
    removes); by default one is made here and removed when training ends."""
    adapter = trainable_adapter(model)
    trainer = _build_trainer(
        model, tokenizer, examples, spec, state_dir, callbacks, adapter, penalty, loss_term
    )
    owned = guard is None
    guard = preemption_guard() if owned else guard
    trainer.add_callback(guard)
    resume = latest_checkpoint(state_dir)
    if resume:
        log.warning("resuming stage training from checkpoint %s", resume)
    started = time.perf_counter()
    try:
        output = trainer.train(resume_from_checkpoint=resume)
    finally:
        if owned:
            guard.uninstall()
    seconds = time.perf_counter() - started
    _raise_if_interrupted(trainer, guard, state_dir)
    gathered = None
    if spec.deepspeed and zero_stage(spec.deepspeed) == 3:
        gathered = trainer.accelerator.get_state_dict(trainer.deepspeed)  # a collective
    table = log_table(trainer.state.log_history)
    info = _stage_info(trainer, output, table, examples, spec, state_dir, adapter, resume, seconds)
    return StageResult(log=table, info=info, state_dict=gathered)


def _training_arguments(spec: TrainSpec, state_dir: Path):
    """The Trainer's arguments for a stage: the spec's, with checkpoints in ``state_dir``."""
    return _stage_arguments_class()(
        warmup_ratio=spec.warmup_ratio,
        output_dir=str(state_dir),
        num_train_epochs=spec.epochs,
        max_steps=spec.max_steps,
        per_device_train_batch_size=spec.batch_size,
        gradient_accumulation_steps=accumulation_steps(spec, world_size()),
        learning_rate=spec.learning_rate,
        lr_scheduler_type=spec.lr_scheduler,
        weight_decay=spec.weight_decay,
        max_grad_norm=spec.max_grad_norm,
        logging_steps=spec.logging_steps,
        save_strategy="steps",
        save_steps=spec.save_steps,
        save_total_limit=2,
        seed=spec.seed,
        data_seed=spec.seed,
        bf16=spec.precision == "bf16",
        use_cpu=not torch.cuda.is_available(),
        gradient_checkpointing=spec.gradient_checkpointing,
        deepspeed=spec.deepspeed,
        ddp_find_unused_parameters=False,
        report_to="none",
        remove_unused_columns=False,
        dataloader_num_workers=0,
        disable_tqdm=False,
    )


def _build_trainer(
    model,
    tokenizer,
    examples,
    spec: TrainSpec,
    state_dir: Path,
    callbacks: Sequence,
    adapter: str,
    penalty: Penalty | None,
    loss_term: LossTerm | None,
):
    """The stage's Trainer with the strategy's callbacks (and the epoch tracker of a dataset
    whose prompts change by epoch)."""
    args = _training_arguments(spec, state_dir)
    trainer = _make_trainer_class()(
        model=model,
        args=args,
        train_dataset=examples,
        data_collator=collator(tokenizer.pad_token_id, spec.packing),
        adapter=adapter,
        penalty=penalty,
        loss_term=loss_term,
        length_window=spec.length_grouping * spec.batching(world_size())["effective_batch"],
        callbacks=list(callbacks),
    )
    if hasattr(examples, "epoch"):
        trainer.add_callback(epoch_tracker(examples))
    return trainer


def _raise_if_interrupted(trainer, guard, state_dir: Path) -> None:
    """A signal stopped training before its last step: record it and raise (a rerun resumes)."""
    if guard.stopped_at is None or trainer.state.global_step >= trainer.state.max_steps:
        return
    if trainer.args.should_save:
        _record_interruption(state_dir, guard)
    raise TrainingInterrupted(
        f"training stopped on a signal at step {guard.stopped_at} of "
        f"{trainer.state.max_steps}; checkpoint saved in {state_dir}, a rerun resumes from it"
    )


def _stage_info(
    trainer,
    output,
    table: pd.DataFrame,
    examples,
    spec: TrainSpec,
    state_dir: Path,
    adapter: str,
    resume: str | None,
    seconds: float,
) -> dict:
    """What the stage record says about the training: steps, loss, throughput, resumptions."""
    tokens = int(table["tokens"].sum())
    return {
        "adapter": adapter,
        "examples": len(examples),
        "steps": int(trainer.state.global_step),
        "train_loss": float(output.training_loss),
        "train_seconds": round(seconds, 2),
        "tokens": tokens,
        "tokens_per_second": round(tokens / seconds, 1) if seconds > 0 else None,
        "resumed_from": resume,
        "resumed_at_step": int(Path(resume).name.rsplit("-", 1)[1]) if resume else 0,
        "interruptions": _interruptions(state_dir),
        "world_size": world_size(),
        "batching": spec.batching(world_size()),
        "spec": asdict(spec),
    }


#: Columns of train_log.parquet (a penalty adds ``task_loss``, ``penalty`` and its parts).
LOG_COLUMNS = {
    "step": ("step", int, 0),
    "epoch": ("epoch", float, math.nan),
    "loss": ("loss", float, math.nan),
    "lr": ("learning_rate", float, math.nan),
    "grad_norm": ("grad_norm", float, math.nan),
    "tokens": ("tokens", int, 0),
    "answer_tokens": ("answer_tokens", int, 0),
    "elapsed_s": ("elapsed_s", float, math.nan),
}
_NOT_LOGGED = {"total_flos", "train_runtime", "train_samples_per_second"}  # end-of-run keys


def log_table(history: list[dict]) -> pd.DataFrame:
    """One row per logged optimiser step; penalty parts become columns of their own."""
    rows = [h for h in history if "loss" in h]
    table = pd.DataFrame(
        {
            column: [kind(h.get(key, default)) for h in rows]
            for column, (key, kind, default) in LOG_COLUMNS.items()
        }
    )
    known = {key for key, _, _ in LOG_COLUMNS.values()} | _NOT_LOGGED
    logged = dict.fromkeys(k for h in rows for k in h if k not in known)
    for extra in sorted(logged, key=lambda k: (k != "task_loss", k != "penalty")):
        table[extra] = [float(h.get(extra, math.nan)) for h in rows]
    return table


INTERRUPTIONS_FILE = "interruptions.json"


def _interruptions(state_dir: Path) -> list[dict]:
    path = state_dir / INTERRUPTIONS_FILE
    return json.loads(path.read_text()) if path.is_file() else []


def _record_interruption(state_dir: Path, guard) -> None:
    """Kept in the state folder across attempts, and in the stage record once it finishes."""
    import signal

    entries = _interruptions(state_dir)
    entries.append(
        {
            "step": guard.stopped_at,
            "signal": signal.Signals(guard.received).name if guard.received else "peer rank",
            "time": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        }
    )
    (state_dir / INTERRUPTIONS_FILE).write_text(json.dumps(entries, indent=2) + "\n")


def zero_stage(deepspeed_config: str) -> int:
    """The ZeRO stage a DeepSpeed config asks for (0 without zero_optimization)."""
    cfg = json.loads(Path(deepspeed_config).read_text())
    return int(cfg.get("zero_optimization", {}).get("stage", 0))


def penalty_divisor(trainer, num_items_in_batch) -> int:
    """What to divide the penalty by inside ``compute_loss`` so one update sees one penalty.

    Mirrors ``Trainer.training_step`` (transformers 5): when the returned loss counts as already
    scaled for accumulation (the model takes ``num_items_in_batch`` and normalises over the
    whole window, or a ``compute_loss_func`` is set), the Trainer back-propagates it as is, so
    the penalty must be divided by the micro-batches of this update. Otherwise the Trainer
    divides the whole returned loss itself, penalty included, and the divisor is 1. DeepSpeed
    runs with ``scale_wrt_gas=False`` there, so the same rule holds.
    """
    scaled = getattr(trainer, "loss_is_scaled_for_ga", None)
    if scaled is None:
        scaled = (
            bool(getattr(trainer, "model_accepts_loss_kwargs", False))
            and num_items_in_batch is not None
        ) or getattr(trainer, "compute_loss_func", None) is not None
    if not scaled:
        return 1
    steps = getattr(trainer, "current_gradient_accumulation_steps", None)
    return int(steps or trainer.args.gradient_accumulation_steps)
