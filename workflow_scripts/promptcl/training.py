"""One continual-learning stage: a new LoRA on top of the frozen earlier ones (IncLoRA).

Lifecycle: :func:`build_stage_model` (setup) → :func:`train_stage` (train, resumable from the
newest checkpoint in an undeclared state folder) → :func:`save_adapter` (a standard PEFT folder).
The Hugging Face Trainer supplies gradient accumulation, bf16 autocast, DeepSpeed and resume.
"""

from __future__ import annotations

import json
import logging
import math
import shutil
import tempfile
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

import pandas as pd
import torch

from .launch import TrainingInterrupted, preemption_guard, world_size
from .modeling import adapter_name, attach_adapters, load_base_model
from .prompting import IGNORE_INDEX, PromptFormat, encode

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class LoraSpec:
    """``config.yaml: lora`` (paper defaults)."""

    r: int = 8
    alpha: int = 32
    dropout: float = 0.1
    target_modules: tuple[str, ...] = ("q_proj", "v_proj")

    @classmethod
    def from_config(cls, cfg: dict) -> LoraSpec:
        return cls(
            r=int(cfg.get("r", 8)),
            alpha=int(cfg.get("alpha", 32)),
            dropout=float(cfg.get("dropout", 0.1)),
            target_modules=tuple(cfg.get("target_modules", ("q_proj", "v_proj"))),
        )

    def peft_config(self):
        from peft import LoraConfig, TaskType

        return LoraConfig(
            task_type=TaskType.CAUSAL_LM,
            r=self.r,
            lora_alpha=self.alpha,
            lora_dropout=self.dropout,
            target_modules=list(self.target_modules),
            bias="none",
        )


@dataclass(frozen=True)
class TrainSpec:
    """``config.yaml: training`` plus the run's seed and the resolved precision."""

    epochs: float = 1.0
    max_steps: int = -1
    learning_rate: float = 1e-3
    batch_size: int = 8
    grad_accum: int | None = None  # None: 1, or derived from global_batch_size
    global_batch_size: int | None = None
    lr_scheduler: str = "linear"
    warmup_ratio: float = 0.0
    weight_decay: float = 0.0
    max_grad_norm: float = 1.0
    logging_steps: int = 1
    save_steps: int = 50
    gradient_checkpointing: bool = False
    deepspeed: str | None = None
    seed: int = 0
    precision: str = "fp32"
    extra: dict = field(default_factory=dict)

    @classmethod
    def from_config(cls, cfg: dict, seed: int, precision: str) -> TrainSpec:
        known = {f for f in cls.__dataclass_fields__ if f not in ("seed", "precision", "extra")}
        unknown = set(cfg) - known
        if unknown:
            raise ValueError(f"training: unknown keys {sorted(unknown)}")
        return cls(**cfg, seed=seed, precision=precision)

    def batching(self, processes: int) -> dict[str, int]:
        """Processes, micro-batch, accumulation and effective batch of a launch."""
        accumulation = accumulation_steps(self, processes)
        return {
            "processes": processes,
            "micro_batch": self.batch_size,
            "grad_accum": accumulation,
            "effective_batch": processes * self.batch_size * accumulation,
        }


def accumulation_steps(spec: TrainSpec, processes: int) -> int:
    """Gradient accumulation steps of a launch on ``processes`` processes.

    With ``global_batch_size`` the accumulation is derived so that every launch optimises with
    the same effective batch (processes × micro-batch × accumulation), on 1 GPU or 8.
    """
    if spec.global_batch_size is None:
        return int(spec.grad_accum or 1)
    if spec.grad_accum is not None:
        raise ValueError(
            "training: set either training.grad_accum or training.global_batch_size, not both "
            f"(grad_accum={spec.grad_accum}, global_batch_size={spec.global_batch_size})"
        )
    per_step = processes * spec.batch_size
    if spec.global_batch_size % per_step:
        raise ValueError(
            f"training.global_batch_size={spec.global_batch_size} is not a multiple of "
            f"processes × training.batch_size = {processes} × {spec.batch_size} = {per_step}"
        )
    return spec.global_batch_size // per_step


def encode_table(
    tokenizer,
    fmt: PromptFormat,
    table: pd.DataFrame,
    instructions: Sequence[str] | None = None,
) -> list[dict]:
    """Training examples (answer = first reference); ``instructions`` overrides per row."""
    examples = []
    for i, row in enumerate(table.itertuples(index=False)):
        instruction = row.instruction if instructions is None else instructions[i]
        enc = encode(tokenizer, fmt, instruction, row.input, row.suffix, row.references[0])
        examples.append({"input_ids": enc.input_ids, "labels": enc.labels})
    return examples


class PadCollator:
    """Pads a batch; padded label positions carry no loss.

    ``left`` (training's default) puts every answer at the end of its row, so the stage's loss
    needs the vocabulary projection of only the last few positions (see :func:`answer_window`);
    position ids then follow the attention mask, which keeps the computation that of the
    unpadded sequence."""

    def __init__(self, pad_token_id: int, left: bool = False):
        self.pad = pad_token_id
        self.left = left

    def __call__(self, batch: list[dict]) -> dict[str, torch.Tensor]:
        width = max(len(ex["input_ids"]) for ex in batch)
        ids = torch.full((len(batch), width), self.pad, dtype=torch.long)
        labels = torch.full((len(batch), width), IGNORE_INDEX, dtype=torch.long)
        mask = torch.zeros((len(batch), width), dtype=torch.long)
        for row, ex in enumerate(batch):
            n = len(ex["input_ids"])
            cols = slice(width - n, width) if self.left else slice(0, n)
            ids[row, cols] = torch.tensor(ex["input_ids"])
            labels[row, cols] = torch.tensor(ex["labels"])
            mask[row, cols] = 1
        out = {"input_ids": ids, "attention_mask": mask, "labels": labels}
        if self.left:
            out["position_ids"] = (mask.cumsum(dim=1) - 1).clamp(min=0)
        return out


def answer_window(labels: torch.Tensor) -> int:
    """How many final positions hold every answer token and the position that predicts the
    first one: the logits the loss needs (``logits_to_keep``), whatever the padding side."""
    columns = (labels != IGNORE_INDEX).any(dim=0).nonzero()
    if columns.numel() == 0:
        return labels.shape[1]
    return labels.shape[1] - int(columns.min()) + 1


class PromptedDataset(torch.utils.data.Dataset):
    """Training examples whose instruction is chosen per (epoch, example) at fetch time.

    Every example is pre-encoded with every candidate instruction, so a strategy only picks a
    candidate id: ``choose(epoch, index)``. ``epoch`` is set by :class:`EpochTracker` before the
    epoch's batches are drawn, which keeps draws independent of resumes and call order.
    """

    def __init__(self, encodings: dict[int, list[dict]], choose):
        sizes = {len(v) for v in encodings.values()}
        if len(sizes) != 1:
            raise ValueError("every candidate must encode the same examples")
        self.encodings = encodings
        self.choose = choose
        self.epoch = 0
        self.size = sizes.pop()

    def __len__(self) -> int:
        return self.size

    def __getitem__(self, index: int) -> dict:
        return self.encodings[self.choose(self.epoch, index)][index]


def _epoch_tracker():
    from transformers import TrainerCallback

    class EpochTracker(TrainerCallback):
        def __init__(self, dataset: PromptedDataset):
            self.dataset = dataset

        def on_epoch_begin(self, args, state, control, **kwargs):
            self.dataset.epoch = int(state.epoch or 0)

    return EpochTracker


def encode_candidates(
    tokenizer,
    fmt: PromptFormat,
    table: pd.DataFrame,
    candidates: dict[int, str],
) -> dict[int, list[dict]]:
    """The table encoded once per candidate instruction."""
    return {
        cid: encode_table(tokenizer, fmt, table, [text] * len(table))
        for cid, text in candidates.items()
    }


def build_stage_model(
    model_dir: Path,
    previous_adapters: Sequence[Path],
    lora: LoraSpec,
    stage: int,
    precision: str = "fp32",
    trust_remote_code: bool = False,
    seed: int = 0,
    method: str = "inclora",
):
    """The model that trains stage k.

    inclora/olora: base + frozen LoRAs of stages 1..k-1 + a new trainable LoRA for stage k.
    seqlora: base + one LoRA that continues training from stage k-1's (``previous_adapters``
    is then just that adapter). A new LoRA's A matrix is random: seeding here makes a rerun (or
    a resumed job, whose weights come from the checkpoint anyway) reproduce the same adapter.
    """
    from peft import PeftModel, get_peft_model
    from transformers import set_seed

    expected = (1 if stage > 1 else 0) if method == "seqlora" else stage - 1
    if len(previous_adapters) != expected:
        raise ValueError(
            f"{method} stage {stage} needs {expected} earlier adapter(s), "
            f"got {len(previous_adapters)}"
        )
    base = load_base_model(model_dir, precision, trust_remote_code)
    name = adapter_name(stage)
    set_seed(seed)
    if not previous_adapters:
        model = get_peft_model(base, lora.peft_config(), adapter_name=name)
    elif method == "seqlora":
        model = PeftModel.from_pretrained(
            base, str(previous_adapters[0]), adapter_name=name, is_trainable=True
        )
    else:
        model = attach_adapters(base, previous_adapters)
        model.add_adapter(name, lora.peft_config())
        model.base_model.set_adapter([adapter_name(i) for i in range(1, stage + 1)])
    for pname, param in model.named_parameters():
        param.requires_grad_(f".{name}." in pname)
    return model


def trainable_adapter(model) -> str:
    names = {
        n.split(".lora_")[1].split(".")[1] for n, p in model.named_parameters() if p.requires_grad
    }
    if len(names) != 1:
        raise RuntimeError(f"expected exactly one trainable adapter, found {sorted(names)}")
    return names.pop()


def save_adapter(
    model, name: str, out_dir: Path, base_model_path: str, state_dict: dict | None = None
) -> None:
    """Write only the new stage's LoRA as a standard PEFT folder (``PeftModel.from_pretrained``).

    ``state_dict``: weights gathered from DeepSpeed ZeRO-3 shards (the model's own are empty)."""
    with tempfile.TemporaryDirectory(dir=out_dir.parent) as tmp:
        model.save_pretrained(tmp, selected_adapters=[name], state_dict=state_dict)
        src = Path(tmp) / name if (Path(tmp) / name).is_dir() else Path(tmp)
        cfg_path = src / "adapter_config.json"
        cfg = json.loads(cfg_path.read_text())
        cfg["base_model_name_or_path"] = base_model_path
        cfg_path.write_text(json.dumps(cfg, indent=2, sort_keys=True))
        if out_dir.exists():
            shutil.rmtree(out_dir)
        shutil.copytree(src, out_dir)


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


def _make_trainer_class():
    from peft import set_peft_model_state_dict
    from safetensors.torch import load_file
    from transformers import Trainer

    class StageTrainer(Trainer):
        """Trainer that checkpoints only the stage's own LoRA and logs token counts.

        The stock PEFT resume path re-activates a single adapter, which would silently drop the
        frozen earlier stages from the forward pass; here they stay active.
        """

        def __init__(self, *args, adapter: str, penalty=None, **kwargs):
            super().__init__(*args, **kwargs)
            self.adapter = adapter
            self.penalty = penalty
            self._tokens = 0
            self._answer_tokens = 0
            self._penalties: list[dict[str, float]] = []
            self._t0 = time.perf_counter()

        def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
            self._tokens += int(inputs["attention_mask"].sum())
            self._answer_tokens += int((inputs["labels"] != IGNORE_INDEX).sum())
            # project to the vocabulary only where labels exist: the loss is the same, and the
            # full projection and its log-softmax were a third of a step's time
            keep = answer_window(inputs["labels"])
            inputs = {**inputs, "labels": inputs["labels"][:, -keep:], "logits_to_keep": keep}
            loss = super().compute_loss(model, inputs, return_outputs, num_items_in_batch)
            if self.penalty is None or not model.training:
                return loss
            from . import olora  # looked up at call time: the divisor rule lives there

            # one penalty per optimiser update, whichever way the Trainer scales the task loss
            steps = olora.penalty_divisor(self, num_items_in_batch)
            value, parts = self.penalty(self.model)
            self._penalties.append({"penalty": float(value), **parts})
            task = loss[0] if return_outputs else loss
            total = task + value / steps
            return (total, loss[1]) if return_outputs else total

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

        def _load_from_checkpoint(self, resume_from_checkpoint: str, model=None) -> None:
            model = model or self.model
            path = Path(resume_from_checkpoint) / self.adapter / "adapter_model.safetensors"
            if not path.is_file():
                path = Path(resume_from_checkpoint) / "adapter_model.safetensors"
            set_peft_model_state_dict(model, load_file(str(path)), adapter_name=self.adapter)
            log.warning("resumed stage adapter weights from %s", resume_from_checkpoint)

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


def train_stage(
    model,
    tokenizer,
    examples,
    spec: TrainSpec,
    state_dir: Path,
    callbacks: Sequence = (),
    penalty=None,
    guard=None,
) -> StageResult:
    """Train the single trainable adapter, resuming from the newest checkpoint in ``state_dir``.

    ``guard``: a :func:`~promptcl.launch.preemption_guard` the caller installed early (and
    removes); by default one is made here and removed when training ends."""
    adapter = trainable_adapter(model)
    use_cpu = not torch.cuda.is_available()
    args = _stage_arguments_class()(
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
        use_cpu=use_cpu,
        gradient_checkpointing=spec.gradient_checkpointing,
        deepspeed=spec.deepspeed,
        ddp_find_unused_parameters=False,
        report_to="none",
        remove_unused_columns=False,
        dataloader_num_workers=0,
        disable_tqdm=False,
    )
    trainer = _make_trainer_class()(
        model=model,
        args=args,
        train_dataset=examples,
        data_collator=PadCollator(tokenizer.pad_token_id, left=True),
        adapter=adapter,
        penalty=penalty,
        callbacks=list(callbacks),
    )
    if isinstance(examples, PromptedDataset):
        trainer.add_callback(_epoch_tracker()(examples))
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
    if guard.stopped_at is not None and trainer.state.global_step < trainer.state.max_steps:
        if trainer.args.should_save:
            _record_interruption(state_dir, guard)
        raise TrainingInterrupted(
            f"training stopped on a signal at step {guard.stopped_at} of "
            f"{trainer.state.max_steps}; checkpoint saved in {state_dir}, a rerun resumes from it"
        )
    gathered = None
    if spec.deepspeed and zero_stage(spec.deepspeed) == 3:
        gathered = trainer.accelerator.get_state_dict(trainer.deepspeed)  # a collective
    history = [h for h in trainer.state.log_history if "loss" in h]
    table = pd.DataFrame(
        {
            "step": [int(h["step"]) for h in history],
            "epoch": [float(h.get("epoch", math.nan)) for h in history],
            "loss": [float(h["loss"]) for h in history],
            "lr": [float(h.get("learning_rate", math.nan)) for h in history],
            "grad_norm": [float(h.get("grad_norm", math.nan)) for h in history],
            "tokens": [int(h.get("tokens", 0)) for h in history],
            "answer_tokens": [int(h.get("answer_tokens", 0)) for h in history],
            "elapsed_s": [float(h.get("elapsed_s", math.nan)) for h in history],
        }
    )
    for extra in ("task_loss", "penalty", "orthogonal", "l2"):
        if any(extra in h for h in history):
            table[extra] = [float(h.get(extra, math.nan)) for h in history]
    tokens = int(table["tokens"].sum())
    info = {
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
    return StageResult(log=table, info=info, state_dict=gathered)


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
