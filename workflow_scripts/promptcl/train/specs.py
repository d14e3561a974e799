"""The typed settings of a stage's training, resolved once from the config (torch-free)."""

from __future__ import annotations

from dataclasses import dataclass, field


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
    #: optimiser steps whose examples are sorted by length together (0: random batches)
    length_grouping: int = 4
    #: each micro-batch's examples in one row with per-example attention boundaries, no padding
    packing: bool = False
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
