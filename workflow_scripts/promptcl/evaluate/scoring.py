"""Pre-update loss of candidate prompts on the current model state (the SAPO criterion).

For each candidate instruction, the answer-token cross-entropy over the first K training
instances. All candidate × instance sequences go through the model together: sorted by length,
left-padded so every answer sits at the end of its row, and only the last few positions are
projected to the vocabulary (``logits_to_keep``), which is where almost all the memory and time
of a naive implementation goes. Position ids follow the attention mask, so a sequence's loss does
not depend on how many pads its batch gives it (with absolute position embeddings it would be
wrong, and with RoPE in bf16 it would drift by about the size of the gaps between paraphrases).
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass

import pandas as pd
import torch
from tqdm.auto import tqdm

from promptcl.evaluate.inference import autocast, prefill
from promptcl.model.batching import left_pad
from promptcl.prompts.prompting import IGNORE_INDEX, PromptFormat, encode_rows
from promptcl.prompts.scores import SCORE_COLUMNS


@dataclass
class ScoringStats:
    sequences: int = 0
    tokens: int = 0
    seconds: float = 0.0


def encode_pairs(
    tokenizer,
    fmt: PromptFormat,
    table: pd.DataFrame,
    candidates: Sequence[tuple[int, str]],
) -> list[tuple[int, int, list[int], list[int]]]:
    """(candidate_id, instance index, input_ids, labels) for every candidate × instance."""
    pairs = []
    for cid, instruction in candidates:
        encoded = encode_rows(tokenizer, fmt, table, [instruction] * len(table))
        pairs += [(cid, i, enc.input_ids, enc.labels) for i, enc in enumerate(encoded)]
    return pairs


def answer_logits(
    model,
    pairs: Sequence[tuple[int, int, list[int], list[int]]],
    pad_token_id: int,
    precision: str,
    share_prefix: bool = False,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(fp32 logits predicting each answer token, those tokens (IGNORE_INDEX where a shorter
    answer is padded), the attention mask) of one left-padded batch.

    Answers end every left-padded row, so only the last positions are projected to the
    vocabulary; position ids follow the mask. ``share_prefix`` computes the rows' shared
    leading tokens once (:func:`promptcl.evaluate.inference.prefill`); off for SAPO's scores, whose
    argmin must not move with batching: in bf16 it moved a loss by up to 2e-3 nats against
    7e-4 for batching alone (tests/unit/test_scoring.py's bf16 case). Works with and without
    autograd."""
    device = next(model.parameters()).device
    ids, mask = left_pad([p[2] for p in pairs], pad_token_id)
    labels, _ = left_pad([p[3] for p in pairs], IGNORE_INDEX)
    answer_len = int((labels != IGNORE_INDEX).sum(dim=1).max())
    keep = answer_len + 1
    with autocast(model, precision):
        logits = prefill(model, ids.to(device), mask.to(device), 0, share_prefix, keep)[0]
    logits = logits[:, :-1].float()  # position t predicts token t+1
    return logits, labels[:, -answer_len:].to(device), mask


def token_losses(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Cross-entropy of every answer token, shaped like ``target`` (0 where it is padding)."""
    return torch.nn.functional.cross_entropy(
        logits.reshape(-1, logits.shape[-1]),
        target.reshape(-1),
        ignore_index=IGNORE_INDEX,
        reduction="none",
    ).view(target.shape)


@dataclass(frozen=True)
class PairStats:
    """One candidate × instance sequence: summed answer-token CE, answer tokens, and how many
    of them are the argmax under teacher forcing."""

    loss_sum: float
    tokens: int
    correct: int


@torch.inference_mode()
def sequence_stats(
    model,
    pad_token_id: int,
    pairs: Sequence[tuple[int, int, list[int], list[int]]],
    batch_size: int = 16,
    precision: str = "fp32",
    stats: ScoringStats | None = None,
) -> list[PairStats]:
    """:class:`PairStats` per pair, in input order."""
    order = sorted(range(len(pairs)), key=lambda i: len(pairs[i][2]))
    results: list[PairStats] = [PairStats(0.0, 0, 0)] * len(pairs)
    started = time.perf_counter()
    for start in tqdm(range(0, len(order), batch_size), desc="score", mininterval=5):
        idx = order[start : start + batch_size]
        batch = [pairs[i] for i in idx]
        logits, target, mask = answer_logits(model, batch, pad_token_id, precision)
        ce = token_losses(logits, target)
        answer = target != IGNORE_INDEX
        counts = answer.sum(dim=1)
        sums = ce.sum(dim=1)
        correct = ((logits.argmax(dim=-1) == target) & answer).sum(dim=1)
        for row, i in enumerate(idx):
            results[i] = PairStats(float(sums[row]), int(counts[row]), int(correct[row]))
        if stats is not None:
            stats.sequences += len(idx)
            stats.tokens += int(mask.sum())
    if stats is not None:
        stats.seconds += time.perf_counter() - started
    return results


def sequence_losses(
    model,
    pad_token_id: int,
    pairs: Sequence[tuple[int, int, list[int], list[int]]],
    batch_size: int = 16,
    precision: str = "fp32",
    stats: ScoringStats | None = None,
) -> list[tuple[float, int]]:
    """(summed answer-token CE, answer tokens) per pair, in input order."""
    found = sequence_stats(model, pad_token_id, pairs, batch_size, precision, stats)
    return [(s.loss_sum, s.tokens) for s in found]


def score_candidates(
    model,
    tokenizer,
    fmt: PromptFormat,
    table: pd.DataFrame,
    candidates: Sequence[tuple[int, str]],
    batch_size: int = 16,
    precision: str = "fp32",
    stats: ScoringStats | None = None,
    reference_batch_size: int = 8,
) -> pd.DataFrame:
    """One row per candidate: its mean answer-token loss three ways (lower = better), and the %
    of answer tokens that are the argmax under teacher forcing (``answer_accuracy``).

    ``mean_batch_loss`` groups the instances (in table order) into consecutive blocks of
    ``reference_batch_size``, takes each block's token-weighted mean and averages those over
    instances, exactly as the reference's ``Trainer.evaluate`` does with that per-device batch.
    None of the three depends on ``batch_size``, which only sizes the forward passes.
    """
    pairs = encode_pairs(tokenizer, fmt, table, candidates)
    found = sequence_stats(model, tokenizer.pad_token_id, pairs, batch_size, precision, stats)
    frame = pd.DataFrame(
        {
            "candidate_id": [p[0] for p in pairs],
            "loss_sum": [s.loss_sum for s in found],
            "tokens": [s.tokens for s in found],
            "correct": [s.correct for s in found],
        }
    )
    frame["instance"] = [p[1] for p in pairs]
    frame["instance_loss"] = frame["loss_sum"] / frame["tokens"]
    frame["block"] = frame["instance"] // reference_batch_size
    blocks = frame.groupby(["candidate_id", "block"], sort=True).agg(
        loss_sum=("loss_sum", "sum"), tokens=("tokens", "sum"), size=("loss_sum", "size")
    )
    blocks["weighted"] = blocks["loss_sum"] / blocks["tokens"] * blocks["size"]
    per_block = blocks.groupby(level="candidate_id")
    grouped = frame.groupby("candidate_id", sort=True)
    out = pd.DataFrame(
        {
            "mean_batch_loss": per_block["weighted"].sum() / per_block["size"].sum(),
            "mean_instance_loss": grouped["instance_loss"].mean(),
            "mean_token_loss": grouped["loss_sum"].sum() / grouped["tokens"].sum(),
            "tokens": grouped["tokens"].sum(),
            "instances": grouped.size(),
            "answer_accuracy": 100.0 * grouped["correct"].sum() / grouped["tokens"].sum(),
        }
    ).reset_index()
    return out[SCORE_COLUMNS]
