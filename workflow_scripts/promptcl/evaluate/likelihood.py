"""Likelihood evaluation: how probable the gold answer is under a model state, and which label
the state finds most probable (rank classification), without generating anything.

Each test item's answers (the gold answer, and every label of a classification task) are
encoded exactly as training encodes its target (the answer and the template's end-of-turn
token). A batch of items goes through the model once, teacher-forced, with the evaluation's
prompt pass (:func:`promptcl.evaluate.inference.prefill`: the rows' shared chat template and
instruction
computed once, positions that follow the mask, only the last position projected to the
vocabulary); every item's answers then continue from its cached prompt in one more pass, whose
answer positions alone are projected. So an item costs one prompt pass however many labels its
task has, and its numbers do not depend on which other items share its batch (up to float
rounding). Models whose cache cannot be copied between rows (sliding-window layers, e.g. Gemma
3) score each item's answers as one batch of whole sequences instead
(:func:`promptcl.evaluate.scoring.answer_logits`), its prompt prefix still computed once.
"""

from __future__ import annotations

import math
import time
from collections.abc import Sequence
from dataclasses import dataclass

import pandas as pd
import torch
from tqdm.auto import tqdm
from transformers import DynamicLayer

from promptcl.analysis.aggregate import LIKELIHOOD_ONLY
from promptcl.analysis.metrics import as_str_list, normalize_answer
from promptcl.evaluate.inference import autocast, prefill, reserved_cache
from promptcl.evaluate.scoring import answer_logits, token_losses
from promptcl.model.batching import left_pad, length_batches, pad
from promptcl.prompts.prompting import IGNORE_INDEX, PromptFormat, encode

LIKELIHOOD_COLUMNS = (
    "id",
    "prompt_id",
    "references",
    "labels",
    *LIKELIHOOD_ONLY,
    "prompt_tokens",
    "input_truncated",
)


@dataclass
class LikelihoodStats:
    sequences: int = 0
    tokens: int = 0
    seconds: float = 0.0


def answer_choices(references, labels) -> tuple[list[str], list[int]]:
    """(the answers scored for one item, which of them are labels): the gold answer (the first
    reference, the training target) first, then each label of the task's label set whose
    normalised form differs from it and from the earlier ones. The gold answer is a label
    (index 0 in the second list) when its normalised form is in the label set."""
    refs = as_str_list(references)
    if not refs:
        raise ValueError("an item has no reference answer to score")
    gold = refs[0]
    seen = {normalize_answer(gold)}
    choices, label_rows = [gold], []
    for label in as_str_list(labels):
        norm = normalize_answer(label)
        if norm == normalize_answer(gold):
            if 0 not in label_rows:
                label_rows.insert(0, 0)
            continue
        if norm in seen or not norm:
            continue
        seen.add(norm)
        label_rows.append(len(choices))
        choices.append(label)
    return choices, label_rows


@dataclass(frozen=True)
class Item:
    """One test item: its prompt tokens and the tokens of each answer scored."""

    prompt: list[int]
    answers: list[list[int]]


def _copyable(model) -> bool:
    """Whether the prompt cache's rows can be copied to each answer (plain attention layers)."""
    from transformers import DynamicCache

    return all(type(layer) is DynamicLayer for layer in DynamicCache(config=model.config).layers)


def _answers_over_cache(model, batch: Sequence[Item], pad_id: int, precision: str):
    """(summed log-probability, tokens) of every answer of a batch of items: the prompts in one
    pass, then all answers over the prompt cache, each row continuing its item's positions."""
    device = next(model.parameters()).device
    ids, mask = left_pad([item.prompt for item in batch], pad_id)
    answers = [a for item in batch for a in item.answers]
    owner = torch.tensor([i for i, item in enumerate(batch) for _ in item.answers], device=device)
    width = max(len(a) for a in answers)
    with autocast(model, precision):
        first, cache, cached_mask, pos = prefill(model, ids.to(device), mask.to(device), width)
        expanded = reserved_cache(model, width)
        for layer, held in zip(expanded.layers, cache.layers, strict=True):
            layer.update(held.keys[owner], held.values[owner])
        answer_ids, answer_mask = pad(answers, pad_id)
        answer_ids, answer_mask = answer_ids.to(device), answer_mask.to(device)
        later = model(
            input_ids=answer_ids,
            attention_mask=torch.cat([cached_mask[owner], answer_mask], dim=1),
            position_ids=pos[owner, -1:] + 1 + torch.arange(width, device=device)[None],
            cache=expanded,
            use_cache=True,
            logits_to_keep=width,
        ).logits
    # position t predicts answer token t: the prompt's last logits, then the answer's own
    logits = torch.cat([first[owner, -1:], later[:, :-1]], dim=1).float()
    target = answer_ids.masked_fill(answer_mask == 0, IGNORE_INDEX)
    sums = -token_losses(logits, target).sum(dim=1)
    return [(float(v), int(n)) for v, n in zip(sums, answer_mask.sum(dim=1), strict=True)]


def _answers_one_item(model, item: Item, pad_id: int, precision: str):
    """The same numbers for one item, its answers as whole sequences in one batch."""
    pairs = [
        (0, c, item.prompt + a, [IGNORE_INDEX] * len(item.prompt) + a)
        for c, a in enumerate(item.answers)
    ]
    logits, target, _ = answer_logits(model, pairs, pad_id, precision, share_prefix=True)
    sums = -token_losses(logits, target).sum(dim=1)
    counts = (target != IGNORE_INDEX).sum(dim=1)
    return [(float(v), int(n)) for v, n in zip(sums, counts, strict=True)]


@torch.inference_mode()
def answer_log_likelihoods(
    model,
    pad_token_id: int,
    items: Sequence[Item],
    batch_size: int = 16,
    precision: str = "fp32",
    stats: LikelihoodStats | None = None,
) -> list[list[tuple[float, int]]]:
    """Per item, per answer: (summed log-probability of its tokens, its token count)."""
    out: list[list[tuple[float, int]]] = [[] for _ in items]
    started = time.perf_counter()
    copyable = _copyable(model)
    batches = (
        length_batches([len(item.prompt) for item in items], batch_size)
        if copyable
        else [[i] for i in range(len(items))]
    )
    for idx in tqdm(batches, desc="likelihood", mininterval=5):
        batch = [items[i] for i in idx]
        if copyable:
            found = _answers_over_cache(model, batch, pad_token_id, precision)
        else:
            found = _answers_one_item(model, batch[0], pad_token_id, precision)
        for i, item in zip(idx, batch, strict=True):
            out[i], found = found[: len(item.answers)], found[len(item.answers) :]
        if stats is not None:
            stats.sequences += sum(len(item.answers) for item in batch)
            stats.tokens += sum(len(item.prompt) + sum(map(len, item.answers)) for item in batch)
    if stats is not None:
        stats.seconds += time.perf_counter() - started
    return out


def likelihood_table(
    model,
    tokenizer,
    table: pd.DataFrame,
    fmt: PromptFormat,
    precision: str = "fp32",
    stats: LikelihoodStats | None = None,
    prompt_id: str = "original",
    instruction: str | None = None,
    batch_size: int = 16,
) -> pd.DataFrame:
    """One row per test item (columns :data:`LIKELIHOOD_COLUMNS`).

    ``gold_logprob`` is the mean log-probability per token of the gold answer (its end-of-turn
    token included), ``gold_logprob_sum`` the total over its ``gold_tokens``. For a task with a
    label set, ``rank_prediction`` is the label whose whole answer is most probable (the total
    log-probability, i.e. the probability of answering exactly that label) and
    ``rank_accuracy`` 100 when its normalised form is the gold answer's, else 0 (NaN without
    labels). ``instruction`` overrides the task's own (a held-out or trained prompt)."""
    items: list[Item] = []
    choices_of, label_rows_of, truncated = [], [], []
    for row in table.itertuples(index=False):
        text = row.instruction if instruction is None else instruction
        choices, label_rows = answer_choices(row.references, row.labels)
        encoded = [encode(tokenizer, fmt, text, row.input, row.suffix, a) for a in choices]
        prompt = encoded[0].input_ids[: encoded[0].prompt_len]
        items.append(Item(prompt, [e.input_ids[e.prompt_len :] for e in encoded]))
        choices_of.append(choices)
        label_rows_of.append(label_rows)
        truncated.append(encoded[0].truncated)
    found = answer_log_likelihoods(
        model, tokenizer.pad_token_id, items, batch_size, precision, stats
    )
    gold_sum, gold_tokens, predicted, correct = [], [], [], []
    for i, scored in enumerate(found):
        gold_sum.append(scored[0][0])
        gold_tokens.append(scored[0][1])
        label_rows = label_rows_of[i]
        if not label_rows:
            predicted.append(None)
            correct.append(math.nan)
            continue
        best = max(label_rows, key=lambda c: (scored[c][0], -c))
        predicted.append(choices_of[i][best])
        correct.append(100.0 if best == 0 else 0.0)  # the gold answer is a label: row 0
    gold_sum_series = pd.Series(gold_sum, dtype=float)
    return pd.DataFrame(
        {
            "id": table["id"].to_numpy(),
            "prompt_id": prompt_id,
            "references": table["references"].to_numpy(),
            "labels": table["labels"].to_numpy(),
            "gold_logprob": (gold_sum_series / pd.Series(gold_tokens, dtype=float)).to_numpy(),
            "gold_logprob_sum": gold_sum_series.to_numpy(),
            "gold_tokens": gold_tokens,
            "rank_prediction": predicted,
            "rank_accuracy": pd.Series(correct, dtype=float).to_numpy(),
            "answers_scored": [len(c) for c in choices_of],
            "prompt_tokens": [len(item.prompt) for item in items],
            "input_truncated": truncated,
        }
    )
