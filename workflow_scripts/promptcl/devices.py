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


def torch_dtype(precision: str) -> torch.dtype:
    return torch.bfloat16 if precision == "bf16" else torch.float32


def default_device() -> torch.device:
    if torch.cuda.is_available():
        return torch.device("cuda", int(os.environ.get("LOCAL_RANK", 0)))
    return torch.device("cpu")
