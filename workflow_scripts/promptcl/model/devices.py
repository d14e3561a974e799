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
    """``auto`` → the attention kernel measured fastest for the phase on the device.

    CUDA: sdpa (flash/memory-efficient kernels) for both phases. CPU: sdpa for inference; for
    training ``cpu_dispatch``, i.e. :mod:`promptcl.model.attention` (eager for short keys, where the
    CPU flash-attention backward alone took 18% of a LoRA step, sdpa for long ones; the A/B is
    printed by benchmarks/model_throughput.py). Eager attention's CPU products are not
    bit-identical across thread counts (SDPA's are): a CPU training resumed with other threads
    drifts by float rounding; ``sdpa`` keeps CPU training thread-count invariant."""
    if name not in ATTENTION:
        raise ValueError(f"model.attn_implementation: expected one of {ATTENTION}, got '{name}'")
    device_type = device_type or ("cuda" if torch.cuda.is_available() else "cpu")
    if name == "auto":
        name = "cpu_dispatch" if training and device_type == "cpu" else "sdpa"
    if name == "cpu_dispatch":
        from promptcl.model.attention import register

        return register()
    return name


def torch_dtype(precision: str) -> torch.dtype:
    return torch.bfloat16 if precision == "bf16" else torch.float32


def default_device() -> torch.device:
    if torch.cuda.is_available():
        return torch.device("cuda", int(os.environ.get("LOCAL_RANK", 0)))
    return torch.device("cpu")
