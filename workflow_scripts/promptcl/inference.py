"""Batched greedy generation for evaluation: one model load, many tasks."""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass

import pandas as pd
import torch
from tqdm.auto import tqdm

from .batching import left_pad, length_batches, positions
from .prompting import PromptFormat, encode_rows, stop_token_ids, strip_reasoning

DECODERS = ("loop", "hf")


@dataclass(frozen=True)
class GenerationSpec:
    """``config.yaml: generation``."""

    max_new_tokens: int = 32
    batch_size: int = 16
    max_new_tokens_per_task: tuple[tuple[str, int], ...] = ()
    decoder: str = "loop"

    @classmethod
    def from_config(cls, cfg: dict) -> GenerationSpec:
        decoder = cfg.get("decoder", "loop")
        if decoder not in DECODERS:
            raise ValueError(f"generation.decoder: expected one of {DECODERS}, got '{decoder}'")
        return cls(
            decoder=decoder,
            max_new_tokens=int(cfg.get("max_new_tokens", 32)),
            batch_size=int(cfg.get("batch_size", 16)),
            max_new_tokens_per_task=tuple(
                sorted((cfg.get("max_new_tokens_per_task") or {}).items())
            ),
        )

    def new_tokens_for(self, task: str) -> int:
        return dict(self.max_new_tokens_per_task).get(task, self.max_new_tokens)


@dataclass
class GenerationStats:
    prompt_tokens: int = 0
    generated_tokens: int = 0
    seconds: float = 0.0


def autocast(model, precision: str):
    """bf16 autocast for a model whose weights are not already bf16 (a no-op otherwise)."""
    device_type = next(model.parameters()).device.type
    enabled = precision == "bf16" and next(model.parameters()).dtype != torch.bfloat16
    return torch.autocast(device_type=device_type, dtype=torch.bfloat16, enabled=enabled)


@torch.inference_mode()
def generate(
    model,
    tokenizer,
    prompts: Sequence[list[int]],
    max_new_tokens: int,
    batch_size: int,
    precision: str = "fp32",
    stats: GenerationStats | None = None,
    desc: str = "generate",
    stops: Sequence[int] | None = None,
    decoder: str = "loop",
) -> list[str]:
    """Greedy decoding in left-padded batches of similar lengths (:func:`length_batches`);
    results in input order.

    ``stops``: token ids that end an answer (default: :func:`stop_token_ids`). ``decoder``:
    ``loop`` (:func:`greedy_tokens`) or ``hf`` (``model.generate``, the earlier path, kept
    for A/B benchmarks); both give the same tokens."""
    device = next(model.parameters()).device
    stops = list(stops) if stops else stop_token_ids(tokenizer)
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else stops[0]
    outputs: list[str] = [""] * len(prompts)
    started = time.perf_counter()
    for idx in tqdm(
        length_batches([len(p) for p in prompts], batch_size), desc=desc, mininterval=5
    ):
        ids, mask = left_pad([prompts[i] for i in idx], pad)
        width = ids.shape[1]
        with autocast(model, precision):
            if decoder == "loop":
                new = greedy_tokens(model, ids.to(device), mask.to(device), max_new_tokens, stops)
            else:
                out = model.generate(
                    input_ids=ids.to(device),
                    attention_mask=mask.to(device),
                    max_new_tokens=max_new_tokens,
                    do_sample=False,
                    eos_token_id=stops,
                    pad_token_id=pad,
                )
                new = out[:, width:]
        new = new.cpu()
        for row, i in enumerate(idx):
            toks = new[row].tolist()
            cut = next((p for p, t in enumerate(toks) if t in stops), len(toks))
            outputs[i] = tokenizer.decode(toks[:cut], skip_special_tokens=True).strip()
            if stats is not None:
                stats.generated_tokens += cut + (1 if cut < len(toks) else 0)
        if stats is not None:
            stats.prompt_tokens += int(mask.sum())
    if stats is not None:
        stats.seconds += time.perf_counter() - started
    return outputs


def greedy_tokens(
    model, ids: torch.Tensor, mask: torch.Tensor, max_new_tokens: int, stops: Sequence[int]
) -> torch.Tensor:
    """The new tokens of greedy decoding of a left-padded batch, until every row has produced
    a stop token or ``max_new_tokens``: (rows, steps); a row's tokens after its stop are
    filler.

    A lean loop over the model's forward with a KV cache, the same tokens as ``generate``
    without its per-step machinery (logits processors, stopping criteria, cache and mask
    bookkeeping). On a CPU a decode step of the default model at batch 16 is mostly
    streaming the weights from memory, so the gain there is small (benchmarks/
    model_throughput.py A/B-times both). The prompt pass projects only the last position to
    the vocabulary; positions follow the mask."""
    from transformers import DynamicCache

    # a growing cache (a preallocated one computes attention over the padded length, whose
    # bf16 sums round differently: 10 of 64 answers changed, for 4% speed)
    cache = DynamicCache(config=model.config)
    stop = torch.tensor(list(stops), dtype=torch.long, device=ids.device)
    pos = positions(mask)
    logits = model(
        input_ids=ids,
        attention_mask=mask,
        position_ids=pos,
        cache=cache,
        use_cache=True,
        logits_to_keep=1,
    ).logits
    rows, width = ids.shape
    out = torch.empty((rows, max_new_tokens), dtype=torch.long, device=ids.device)
    done = torch.zeros(rows, dtype=torch.bool, device=ids.device)
    grown = torch.ones((rows, width + max_new_tokens), dtype=mask.dtype, device=mask.device)
    grown[:, :width] = mask
    pos = pos[:, -1:]
    for step in range(max_new_tokens):
        token = logits[:, -1].argmax(dim=-1)
        out[:, step] = token
        done |= torch.isin(token, stop)
        if step + 1 == max_new_tokens or bool(done.all()):
            return out[:, : step + 1]
        pos = pos + 1
        logits = model(
            input_ids=token[:, None],
            attention_mask=grown[:, : width + step + 1],
            position_ids=pos,
            cache=cache,
            use_cache=True,
        ).logits
    return out[:, :0]


def predict_table(
    model,
    tokenizer,
    table: pd.DataFrame,
    fmt: PromptFormat,
    gen: GenerationSpec,
    task: str,
    precision: str = "fp32",
    stats: GenerationStats | None = None,
    prompt_id: str = "original",
    instruction: str | None = None,
) -> pd.DataFrame:
    """Predictions for one task table (columns of :data:`promptcl.tasks.TABLE_COLUMNS`).

    ``instruction`` overrides the task's own (e.g. a held-out paraphrase); ``prompt_id`` names it.
    ``raw_prediction`` is the decoded text; ``prediction`` (what is scored) has reasoning blocks
    such as ``<think>…</think>`` removed.
    """
    new_tokens = gen.new_tokens_for(task)
    instructions = None if instruction is None else [instruction] * len(table)
    encoded = encode_rows(tokenizer, fmt, table, instructions, with_answer=False)
    prompts = [enc.input_ids for enc in encoded]
    truncated = [enc.truncated for enc in encoded]
    raw = generate(
        model,
        tokenizer,
        prompts,
        new_tokens,
        gen.batch_size,
        precision,
        stats,
        desc=task,
        stops=stop_token_ids(tokenizer, fmt),
        decoder=gen.decoder,
    )
    return pd.DataFrame(
        {
            "id": table["id"].to_numpy(),
            "prompt_id": prompt_id,
            "prediction": [strip_reasoning(text) for text in raw],
            "raw_prediction": raw,
            "references": table["references"].to_numpy(),
            "labels": table["labels"].to_numpy(),
            "prompt_tokens": [len(p) for p in prompts],
            "input_truncated": truncated,
        }
    )
