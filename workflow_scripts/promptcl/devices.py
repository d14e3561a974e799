"""Compute precision and device of a job: what the hardware runs fast."""

from __future__ import annotations

import os

import torch


def resolve_precision(precision: str) -> str:
    """``auto`` → bf16 where the hardware runs it fast (CUDA bf16, or a CPU with native bf16)."""
    if precision in ("bf16", "fp32"):
        return precision
    if precision != "auto":
        raise ValueError(f"model.precision: expected auto, bf16 or fp32, got '{precision}'")
    if torch.cuda.is_available():
        return "bf16" if torch.cuda.is_bf16_supported() else "fp32"
    try:
        return "bf16" if torch.ops.mkldnn._is_mkldnn_bf16_supported() else "fp32"
    except (AttributeError, RuntimeError):
        return "fp32"


ATTENTION = ("auto", "eager", "sdpa", "flash_attention_2", "cpu_dispatch")


def resolve_attention(name: str, training: bool, device_type: str | None = None) -> str:
    """``auto`` → sdpa (flash/memory-efficient kernels) on every device and phase.

    ``cpu_dispatch``: :mod:`promptcl.attention` (eager for short keys, where the CPU
    flash-attention backward alone took 18% of a LoRA step, sdpa for long ones), 1.2-1.3×
    faster CPU training steps; not the default, because a SLURM-resumed CPU training did not
    end on the uninterrupted run's adapter with it (tests/cluster/test_slurm.py), which is
    not understood yet."""
    if name not in ATTENTION:
        raise ValueError(f"model.attn_implementation: expected one of {ATTENTION}, got '{name}'")
    if name == "cpu_dispatch":
        from .attention import register

        return register()
    return "sdpa" if name == "auto" else name


def torch_dtype(precision: str) -> torch.dtype:
    return torch.bfloat16 if precision == "bf16" else torch.float32


def default_device() -> torch.device:
    if torch.cuda.is_available():
        return torch.device("cuda", int(os.environ.get("LOCAL_RANK", 0)))
    return torch.device("cpu")
