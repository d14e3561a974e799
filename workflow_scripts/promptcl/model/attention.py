"""``model.attn_implementation: auto`` on a CPU: the model's own eager attention for short keys,
PyTorch's SDPA (flash) kernel for long ones, chosen per call.

Measured for a LoRA training step of the default model (bf16, batch 8, 2 threads): eager is
1.2–1.3× faster than SDPA up to ~320 tokens, because the CPU flash-attention *backward* runs at a
few % of the matmul rate there, while eager's float softmax over (length × length) scores makes
it 1.5× slower at ~550 tokens; SDPA also wins for inference. One registered implementation keeps
the choice exact and per batch (the same mask: additive for eager, as booleans for SDPA)."""

from __future__ import annotations

import sys

import torch

NAME = "promptcl_cpu"
#: longest key length served by eager attention (the measured crossover lies in 320–550)
EAGER_MAX_KEYS = 384


def length_dispatch(module: torch.nn.Module, query, key, value, attention_mask, **kwargs):
    """Eager attention when the keys are short (and the model defines it), else SDPA."""
    from transformers.integrations.sdpa_attention import sdpa_attention_forward

    if key.shape[-2] <= EAGER_MAX_KEYS:
        eager = getattr(sys.modules[type(module).__module__], "eager_attention_forward", None)
        if eager is not None:
            return eager(module, query, key, value, attention_mask, **kwargs)
    if attention_mask is not None and attention_mask.is_floating_point():
        attention_mask = attention_mask == 0  # SDPA's kernels are faster with a boolean mask
    return sdpa_attention_forward(module, query, key, value, attention_mask, **kwargs)


def register() -> str:
    """Register the implementation (and its mask: eager's additive float mask, which SDPA
    accepts too) with transformers; returns its name for ``set_attn_implementation``."""
    from transformers import AttentionInterface
    from transformers.masking_utils import AttentionMaskInterface, eager_mask

    AttentionInterface.register(NAME, length_dispatch)
    AttentionMaskInterface.register(NAME, eager_mask)
    return NAME
