"""Batched greedy generation for evaluation: one model load, many tasks."""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass

import pandas as pd
import torch
from tqdm.auto import tqdm
from transformers import DynamicCache, DynamicLayer
from transformers.cache_utils import DynamicSlidingWindowLayer

from promptcl.model.batching import last_positions, left_pad, length_batches, positions
from promptcl.prompts.prompting import PromptFormat, encode_rows, stop_token_ids, strip_reasoning

DECODERS = ("loop", "hf")
#: hf = this process's model (the decoders above); vllm = one vLLM engine per prediction job
ENGINES = ("hf", "vllm")


@dataclass(frozen=True)
class GenerationSpec:
    """``config.yaml: generation``."""

    max_new_tokens: int = 32
    batch_size: int = 16
    max_new_tokens_per_task: tuple[tuple[str, int], ...] = ()
    decoder: str = "loop"
    share_prefix: bool = True
    engine: str = "hf"

    @classmethod
    def from_config(cls, cfg: dict) -> GenerationSpec:
        decoder = cfg.get("decoder", "loop")
        if decoder not in DECODERS:
            raise ValueError(f"generation.decoder: expected one of {DECODERS}, got '{decoder}'")
        engine = cfg.get("engine", "hf")
        if engine not in ENGINES:
            raise ValueError(f"generation.engine: expected one of {ENGINES}, got '{engine}'")
        return cls(
            engine=engine,
            decoder=decoder,
            share_prefix=bool(cfg.get("share_prefix", True)),
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
    share_prefix: bool = True,
) -> list[str]:
    """Greedy decoding in left-padded batches of similar lengths (:func:`length_batches`);
    results in input order.

    ``stops``: token ids that end an answer (default: :func:`stop_token_ids`). ``decoder``:
    ``loop`` (:func:`greedy_tokens`) or ``hf`` (``model.generate``, the earlier path, kept
    for A/B benchmarks); both give the same tokens. ``share_prefix``: the loop computes the
    rows' shared leading tokens once (:func:`prefill`)."""
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
                new = greedy_tokens(
                    model, ids.to(device), mask.to(device), max_new_tokens, stops, share_prefix
                )
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
            outputs[i], used = decode_answer(tokenizer, new[row].tolist(), stops)
            if stats is not None:
                stats.generated_tokens += used
        if stats is not None:
            stats.prompt_tokens += int(mask.sum())
    if stats is not None:
        stats.seconds += time.perf_counter() - started
    return outputs


def decode_answer(tokenizer, tokens: Sequence[int], stops: Sequence[int]) -> tuple[str, int]:
    """(the answer text: the tokens before the first stop token, special tokens dropped, stripped;
    the tokens generated, the stop token included). Every engine's output is cut here, so the
    engines share their stop conditions."""
    cut = next((p for p, t in enumerate(tokens) if t in stops), len(tokens))
    text = tokenizer.decode(list(tokens[:cut]), skip_special_tokens=True).strip()
    return text, cut + (1 if cut < len(tokens) else 0)


#: fewest shared leading tokens worth a separate forward pass of the prefix
MIN_SHARED_PREFIX = 8


def greedy_tokens(
    model,
    ids: torch.Tensor,
    mask: torch.Tensor,
    max_new_tokens: int,
    stops: Sequence[int],
    share_prefix: bool = True,
) -> torch.Tensor:
    """The new tokens of greedy decoding of a left-padded batch, until every row has produced
    a stop token or ``max_new_tokens``: (rows, steps); a row's tokens after its stop are
    filler.

    A lean loop over the model's forward with a KV cache, the same tokens as ``generate``
    without its per-step machinery (logits processors, stopping criteria, cache and mask
    bookkeeping). The cache is reserved once for the whole generation
    (:func:`reserved_cache`): a growing cache copies every layer's keys and values at every
    step. The prompt pass (:func:`prefill`) computes the rows' shared leading tokens (chat
    template, system prompt, instruction) once, and projects only the last position to the
    vocabulary; positions follow the mask."""
    stop = torch.tensor(list(stops), dtype=torch.long, device=ids.device)
    logits, cache, mask, pos = prefill(model, ids, mask, max_new_tokens, share_prefix)
    rows, width = mask.shape
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


def shared_prefix(ids: torch.Tensor, mask: torch.Tensor, own: int = 1) -> int:
    """How many leading real tokens every row of a left-padded batch has in common, leaving
    each row at least ``own`` tokens of its own (those whose logits are wanted)."""
    lengths = mask.sum(dim=1).long()
    start = ids.shape[1] - lengths  # where each row's real tokens begin
    limit = int(lengths.min()) - own
    if ids.shape[0] < 2 or limit < 1:
        return 0
    cols = start[:, None] + torch.arange(limit, device=ids.device)[None]
    same = (ids.gather(1, cols) == ids[0, int(start[0]) :][:limit]).all(dim=0)
    return int(same.long().cumprod(dim=0).sum())


def prefill(
    model,
    ids: torch.Tensor,
    mask: torch.Tensor,
    extra: int,
    share_prefix: bool = True,
    keep: int = 1,
) -> tuple[torch.Tensor, DynamicCache | None, torch.Tensor, torch.Tensor]:
    """The prompt pass of a left-padded batch: (the logits of the last ``keep`` positions,
    the cache with room for ``extra`` more positions, the attention mask over the cached
    positions, their position ids). Also prompt scoring's forward pass (``extra`` 0).

    When the rows share at least :data:`MIN_SHARED_PREFIX` leading tokens, those go through
    the model once (batch 1) and their keys and values are copied to every row; the rows'
    own tokens follow, left-padded after the prefix (pads in the middle, masked; positions
    continue from the prefix, so each row computes what its unpadded sequence does). Exact up
    to floating-point rounding: the prefix's products run at another batch shape (measured
    on the demo: see docs/results.md)."""
    shared = shared_prefix(ids, mask, keep) if share_prefix else 0
    if shared < MIN_SHARED_PREFIX or not _shareable(model, ids.shape[1] + extra):
        cache = reserved_cache(model, extra) if extra else None  # scoring needs none
        pos = positions(mask)
        logits = model(
            input_ids=ids,
            attention_mask=mask,
            position_ids=pos,
            cache=cache,
            use_cache=cache is not None,
            logits_to_keep=last_positions(ids.shape[1], keep, ids.device),
        ).logits
        return logits, cache, mask, pos
    rows, width = ids.shape
    own = mask.sum(dim=1) - shared  # each row's tokens after the prefix
    own_width = int(own.max())
    first = width - int(mask[0].sum())
    prefix = ids[:1, first : first + shared]
    prefix_cache = DynamicCache(config=model.config)
    model(
        input_ids=prefix,
        position_ids=torch.arange(shared, device=ids.device)[None],
        cache=prefix_cache,
        use_cache=True,
        logits_to_keep=1,
    )
    cache = reserved_cache(model, own_width + extra)
    for layer, held in zip(cache.layers, prefix_cache.layers, strict=True):
        layer.update(held.keys.expand(rows, -1, -1, -1), held.values.expand(rows, -1, -1, -1))
    cols = torch.arange(own_width, device=ids.device)[None]
    own_mask = (cols >= (own_width - own)[:, None]).to(mask.dtype)
    own_ids = ids[:, width - own_width :].masked_fill(own_mask == 0, 0)
    full_mask = torch.cat([mask.new_ones((rows, shared)), own_mask], dim=1)
    pos = positions(full_mask)[:, shared:]
    logits = model(
        input_ids=own_ids,
        attention_mask=full_mask,
        position_ids=pos,
        cache=cache,
        use_cache=True,
        logits_to_keep=last_positions(own_width, keep, ids.device),
    ).logits
    return logits, cache, full_mask, pos


def _shareable(model, span: int) -> bool:
    """Prefix sharing copies keys and values between caches: only for the plain attention
    cache's layers, and sliding-window layers whose window covers the whole ``span`` (their
    window counts cache slots, and the pads after the prefix would take some)."""
    for layer in DynamicCache(config=model.config).layers:
        if type(layer) is DynamicSlidingWindowLayer:
            if layer.sliding_window <= span:
                return False
        elif type(layer) is not DynamicLayer:
            return False
    return True


class ReservedLayer(DynamicLayer):
    """A full-attention cache layer whose keys and values live in a buffer reserved for the
    prompt and ``extra`` more positions: each forward writes its new positions in place and
    attends to a view of the filled part. The same keys, values and attention lengths as
    :class:`~transformers.DynamicLayer` (so the same tokens), without its per-step
    concatenation, which copies the whole cache of every layer at every step. (A static
    cache, which attends over its whole length, changes bf16 sums and 10 of 64 answers.)"""

    def __init__(self, extra: int, **kwargs):
        super().__init__(**kwargs)
        self.extra = extra
        self.length = 0

    def update(
        self, key_states: torch.Tensor, value_states: torch.Tensor, *args, **kwargs
    ) -> tuple[torch.Tensor, torch.Tensor]:
        new = key_states.shape[-2]
        if not self.is_initialized:
            self.device = key_states.device
            self._keys = _reserve(key_states, new + self.extra)
            self._values = _reserve(value_states, new + self.extra)
            self.is_initialized = True
        end = self.length + new
        if end > self._keys.shape[-2]:  # more than reserved: grow, as DynamicLayer would
            self._keys = torch.cat([self._keys[..., : self.length, :], key_states], dim=-2)
            self._values = torch.cat([self._values[..., : self.length, :], value_states], dim=-2)
        else:
            self._keys[..., self.length : end, :] = key_states
            self._values[..., self.length : end, :] = value_states
        self.length = end
        self.keys, self.values = self._keys[..., :end, :], self._values[..., :end, :]
        return self.keys, self.values

    def reset(self) -> None:
        self.length = 0
        super().reset()


def _reserve(states: torch.Tensor, length: int) -> torch.Tensor:
    rows, heads, _, dim = states.shape
    return states.new_empty((rows, heads, length, dim))


def reserved_cache(model, extra: int) -> DynamicCache:
    """The model's own dynamic cache with every full-attention layer replaced by a
    :class:`ReservedLayer` for ``extra`` new positions (sliding-window layers, e.g. Gemma 3's,
    stay as they are)."""
    cache = DynamicCache(config=model.config)
    cache.layers = [
        ReservedLayer(extra) if type(layer) is DynamicLayer else layer for layer in cache.layers
    ]
    return cache


@dataclass
class Requests:
    """The prompts of one (task, evaluation prompt): token ids as the project encodes them."""

    task: str
    prompt_id: str
    table: pd.DataFrame
    prompts: list[list[int]]
    truncated: list[bool]
    max_new_tokens: int
    stops: list[int]


def encode_requests(
    tokenizer,
    table: pd.DataFrame,
    fmt: PromptFormat,
    gen: GenerationSpec,
    task: str,
    prompt_id: str = "original",
    instruction: str | None = None,
) -> Requests:
    """The generation prompts of one task table under one instruction (None: the task's own)."""
    instructions = None if instruction is None else [instruction] * len(table)
    encoded = encode_rows(tokenizer, fmt, table, instructions, with_answer=False)
    return Requests(
        task=task,
        prompt_id=prompt_id,
        table=table,
        prompts=[enc.input_ids for enc in encoded],
        truncated=[enc.truncated for enc in encoded],
        max_new_tokens=gen.new_tokens_for(task),
        stops=stop_token_ids(tokenizer, fmt),
    )


def prediction_frame(requests: Requests, raw: Sequence[str]) -> pd.DataFrame:
    """The prediction table of one (task, prompt): ``raw_prediction`` is the decoded text;
    ``prediction`` (what is scored) has reasoning blocks such as ``<think>…</think>`` removed."""
    table = requests.table
    return pd.DataFrame(
        {
            "id": table["id"].to_numpy(),
            "prompt_id": requests.prompt_id,
            "prediction": [strip_reasoning(text) for text in raw],
            "raw_prediction": list(raw),
            "references": table["references"].to_numpy(),
            "labels": table["labels"].to_numpy(),
            "prompt_tokens": [len(p) for p in requests.prompts],
            "input_truncated": requests.truncated,
        }
    )


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
    """Predictions for one task table (columns of :data:`promptcl.tasks.files.TABLE_COLUMNS`) with
    the
    ``hf`` engine: this process's model, one forward loop per batch.

    ``instruction`` overrides the task's own (e.g. a held-out paraphrase); ``prompt_id`` names it.
    """
    requests = encode_requests(tokenizer, table, fmt, gen, task, prompt_id, instruction)
    raw = generate(
        model,
        tokenizer,
        requests.prompts,
        requests.max_new_tokens,
        gen.batch_size,
        precision,
        stats,
        desc=task,
        stops=requests.stops,
        decoder=gen.decoder,
        share_prefix=gen.share_prefix,
    )
    return prediction_frame(requests, raw)
