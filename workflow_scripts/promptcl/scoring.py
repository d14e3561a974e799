"""Pre-update loss of candidate prompts on the current model state (the SAPO criterion).

For each candidate instruction, the answer-token cross-entropy over the first K training
instances. All candidate × instance sequences go through the model together: sorted by length,
left-padded so every answer sits at the end of its row, and only the last few positions are
projected to the vocabulary (``logits_to_keep``), which is where almost all the memory and time
of a naive implementation goes.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass

import pandas as pd
import torch
from tqdm.auto import tqdm

from .inference import _autocast, left_pad
from .prompting import IGNORE_INDEX, PromptFormat, encode

SCORE_COLUMNS = [
    "candidate_id",
    "mean_token_loss",
    "mean_instance_loss",
    "tokens",
    "instances",
]


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
    max_length: int,
) -> list[tuple[int, int, list[int], list[int]]]:
    """(candidate_id, instance index, input_ids, labels) for every candidate × instance."""
    pairs = []
    for cid, instruction in candidates:
        for i, row in enumerate(table.itertuples(index=False)):
            enc = encode(
                tokenizer, fmt, instruction, row.input, row.suffix, row.references[0], max_length
            )
            pairs.append((cid, i, enc.input_ids, enc.labels))
    return pairs


@torch.inference_mode()
def sequence_losses(
    model,
    pad_token_id: int,
    pairs: Sequence[tuple[int, int, list[int], list[int]]],
    batch_size: int = 16,
    precision: str = "fp32",
    stats: ScoringStats | None = None,
) -> list[tuple[float, int]]:
    """(summed answer-token CE, answer tokens) per pair, in input order."""
    device = next(model.parameters()).device
    order = sorted(range(len(pairs)), key=lambda i: len(pairs[i][2]))
    results: list[tuple[float, int]] = [(0.0, 0)] * len(pairs)
    started = time.perf_counter()
    for start in tqdm(range(0, len(order), batch_size), desc="score", mininterval=5):
        idx = order[start : start + batch_size]
        ids, mask = left_pad([pairs[i][2] for i in idx], pad_token_id)
        labels, _ = left_pad([pairs[i][3] for i in idx], IGNORE_INDEX)
        # answers end every (left-padded) row: the logits of the last `keep` positions suffice
        answer_len = int((labels != IGNORE_INDEX).sum(dim=1).max())
        keep = answer_len + 1
        with _autocast(model, precision):
            out = model(
                input_ids=ids.to(device), attention_mask=mask.to(device), logits_to_keep=keep
            )
        logits = out.logits[:, -keep:-1].float()  # position t predicts token t+1
        target = labels[:, -answer_len:].to(device)
        ce = torch.nn.functional.cross_entropy(
            logits.reshape(-1, logits.shape[-1]),
            target.reshape(-1),
            ignore_index=IGNORE_INDEX,
            reduction="none",
        ).view(target.shape)
        counts = (target != IGNORE_INDEX).sum(dim=1)
        sums = ce.sum(dim=1)
        for row, i in enumerate(idx):
            results[i] = (float(sums[row]), int(counts[row]))
        if stats is not None:
            stats.sequences += len(idx)
            stats.tokens += int(mask.sum())
    if stats is not None:
        stats.seconds += time.perf_counter() - started
    return results


def score_candidates(
    model,
    tokenizer,
    fmt: PromptFormat,
    table: pd.DataFrame,
    candidates: Sequence[tuple[int, str]],
    max_length: int,
    batch_size: int = 16,
    precision: str = "fp32",
    stats: ScoringStats | None = None,
) -> pd.DataFrame:
    """One row per candidate: mean loss per answer token and per instance (lower = better)."""
    pairs = encode_pairs(tokenizer, fmt, table, candidates, max_length)
    losses = sequence_losses(model, tokenizer.pad_token_id, pairs, batch_size, precision, stats)
    frame = pd.DataFrame(
        {
            "candidate_id": [p[0] for p in pairs],
            "loss_sum": [loss for loss, _ in losses],
            "tokens": [n for _, n in losses],
        }
    )
    frame["instance_loss"] = frame["loss_sum"] / frame["tokens"]
    grouped = frame.groupby("candidate_id", sort=True)
    out = pd.DataFrame(
        {
            "mean_token_loss": grouped["loss_sum"].sum() / grouped["tokens"].sum(),
            "mean_instance_loss": grouped["instance_loss"].mean(),
            "tokens": grouped["tokens"].sum(),
            "instances": grouped.size(),
        }
    ).reset_index()
    return out[SCORE_COLUMNS]
