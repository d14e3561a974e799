"""The typed settings of a stage's training, resolved once from the config (torch-free).

Their defaults are the schema's (``config/schema.yaml``), which snakemake's ``validate`` fills
into the config before any job sees it: the specs read every key from that config and repeat
none of them. Callers without a validated config (benchmarks, tests) start from
:func:`schema_defaults`.
"""

from __future__ import annotations

from dataclasses import dataclass, field, fields
from pathlib import Path

from promptcl.errors import check_accumulation_keys

#: the workflow's config schema (its defaults are the specs' defaults)
SCHEMA = Path(__file__).resolve().parents[3] / "config" / "schema.yaml"


def schema_defaults(section: str) -> dict:
    """The schema's defaults of a top-level config section: what ``validate`` fills in."""
    import yaml

    schema = yaml.safe_load(SCHEMA.read_text())
    properties = schema["properties"][section]["properties"]
    return {key: prop["default"] for key, prop in properties.items() if "default" in prop}


def _require(cfg: dict, section: str, keys) -> None:
    """Every key of the section, or an error naming the first missing one."""
    missing = [key for key in keys if key not in cfg]
    if missing:
        raise ValueError(
            f"{section}.{missing[0]}: missing from the config (the schema's default is filled "
            f"in when the config is validated; missing: {', '.join(missing)})"
        )


@dataclass(frozen=True)
class LoraSpec:
    """``config.yaml: lora`` (the schema's defaults are the paper's)."""

    r: int
    alpha: int
    dropout: float
    target_modules: tuple[str, ...]

    @classmethod
    def from_config(cls, cfg: dict) -> LoraSpec:
        _require(cfg, "lora", [f.name for f in fields(cls)])
        return cls(
            r=int(cfg["r"]),
            alpha=int(cfg["alpha"]),
            dropout=float(cfg["dropout"]),
            target_modules=tuple(cfg["target_modules"]),
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

    epochs: float
    max_steps: int
    learning_rate: float
    batch_size: int
    grad_accum: int | None  # None: 1, or derived from global_batch_size
    global_batch_size: int | None
    lr_scheduler: str
    warmup_ratio: float
    weight_decay: float
    max_grad_norm: float
    logging_steps: int
    save_steps: int
    gradient_checkpointing: bool
    #: optimiser steps whose examples are sorted by length together (0: random batches)
    length_grouping: int
    #: each micro-batch's examples in one row with per-example attention boundaries, no padding
    packing: bool
    #: a launch key, not read from the config: the stage job sets the DeepSpeed config the
    #: launch uses (None: none)
    deepspeed: str | None
    seed: int
    precision: str
    extra: dict = field(default_factory=dict)

    @classmethod
    def from_config(cls, cfg: dict, seed: int, precision: str) -> TrainSpec:
        """From the validated ``training`` section without its launch keys (``deepspeed`` may
        stay: the stage job replaces it by what the launch uses)."""
        keys = [f.name for f in fields(cls) if f.name not in ("seed", "precision", "extra")]
        unknown = set(cfg) - set(keys)
        if unknown:
            raise ValueError(f"training: unknown keys {sorted(unknown)}")
        _require(cfg, "training", [key for key in keys if key != "deepspeed"])
        return cls(**{"deepspeed": None, **cfg}, seed=seed, precision=precision)

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
    check_accumulation_keys(spec.grad_accum, spec.global_batch_size)
    if spec.global_batch_size is None:
        return int(spec.grad_accum or 1)
    per_step = processes * spec.batch_size
    if spec.global_batch_size % per_step:
        raise ValueError(
            f"training.global_batch_size={spec.global_batch_size} is not a multiple of "
            f"processes × training.batch_size = {processes} × {spec.batch_size} = {per_step}"
        )
    return spec.global_batch_size // per_step
