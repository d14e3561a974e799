"""Batches of token sequences: padded right (labels follow) or left (scoring, generation and
training: every sequence ends at the last column, where answers are read and generation
continues), or packed into one row with per-example attention boundaries (training on GPUs)."""

from __future__ import annotations

from collections.abc import Sequence

import torch

from promptcl.prompts.prompting import IGNORE_INDEX


def pad(
    seqs: Sequence[list[int]], value: int, side: str = "right"
) -> tuple[torch.Tensor, torch.Tensor]:
    """(padded ids, attention mask) of a batch of sequences."""
    width = max(len(s) for s in seqs)
    ids = torch.full((len(seqs), width), value, dtype=torch.long)
    mask = torch.zeros((len(seqs), width), dtype=torch.long)
    for row, seq in enumerate(seqs):
        cols = slice(0, len(seq)) if side == "right" else slice(width - len(seq), width)
        ids[row, cols] = torch.tensor(seq, dtype=torch.long)
        mask[row, cols] = 1
    return ids, mask


def left_pad(seqs: Sequence[list[int]], value: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Left padding keeps every sequence's last token at the end, where generation continues."""
    return pad(seqs, value, "left")


def length_batches(lengths: Sequence[int], batch_size: int) -> list[list[int]]:
    """Indices of sequences grouped longest first into batches of at most ``batch_size`` rows
    and at most ``batch_size`` × the median length padded tokens (one long outlier no longer
    pads fifteen short prompts to its length: a batch holding it has fewer rows)."""
    order = sorted(range(len(lengths)), key=lambda i: -lengths[i])
    if not order:
        return []
    budget = batch_size * sorted(lengths)[len(lengths) // 2]
    batches, start = [], 0
    while start < len(order):
        rows = max(1, min(batch_size, budget // max(lengths[order[start]], 1)))
        batches.append(order[start : start + rows])
        start += rows
    return batches


class LengthGroupedSampler(torch.utils.data.Sampler[int]):
    """A training order that keeps padding low and batches random.

    Each epoch draws a permutation seeded by (seed, epoch) only, so a resumed or restarted job
    sees the same order whatever the global RNG did; each window of ``window`` consecutive
    examples of it (a few optimiser steps' worth) is then sorted longest first, so the
    micro-batches cut from it hold examples of similar length. ``set_epoch`` is called by the
    Trainer (through Accelerate, also when DDP shards the batches) before each epoch."""

    def __init__(self, lengths: Sequence[int], window: int, seed: int):
        if window < 1:
            raise ValueError(f"length grouping window must be >= 1, got {window}")
        self.lengths = list(lengths)
        self.window = window
        self.seed = seed
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)

    def __len__(self) -> int:
        return len(self.lengths)

    def __iter__(self):
        generator = torch.Generator().manual_seed(self.seed * 1_000_003 + self.epoch)
        order = torch.randperm(len(self.lengths), generator=generator).tolist()
        for start in range(0, len(order), self.window):
            window = order[start : start + self.window]
            yield from sorted(window, key=lambda i: -self.lengths[i])


def positions(mask: torch.Tensor) -> torch.Tensor:
    """Position ids that follow the attention mask: a left-padded row starts at 0 like an
    unpadded one, so its scores do not depend on how many pads its batch gives it."""
    return (mask.cumsum(dim=1) - 1).clamp(min=0)


class PadCollator:
    """Pads a training batch; padded label positions carry no loss.

    ``left`` (training's default) puts every answer at the end of its row, so the stage's loss
    needs the vocabulary projection of only the last few positions (see :func:`answer_window`);
    position ids then follow the attention mask, which keeps the computation that of the
    unpadded sequence."""

    def __init__(self, pad_token_id: int, left: bool = False):
        self.pad = pad_token_id
        self.side = "left" if left else "right"

    def __call__(self, batch: list[dict]) -> dict[str, torch.Tensor]:
        ids, mask = pad([ex["input_ids"] for ex in batch], self.pad, self.side)
        labels, _ = pad([ex["labels"] for ex in batch], IGNORE_INDEX, self.side)
        out = {"input_ids": ids, "attention_mask": mask, "labels": labels}
        if self.side == "left":
            out["position_ids"] = positions(mask)
        return out


class PackCollator:
    """``training.packing``: a micro-batch's examples concatenated into one row, no padding.

    Position ids restart at 0 for each example; with no attention mask, transformers derives a
    block-diagonal causal mask from them (sdpa, eager and this project's CPU attention) and
    flash_attention_2 runs its variable-length kernel, so no example attends to another and
    every token's computation is that of its unpadded sequence. ``use_cache=False`` is part of
    the batch: a cache would switch the packed-mask detection off and silently let the examples
    attend to each other. The loss is unchanged (the same answer tokens, the same mean)."""

    def __call__(self, batch: list[dict]) -> dict[str, torch.Tensor]:
        ids = [t for ex in batch for t in ex["input_ids"]]
        labels = [t for ex in batch for t in ex["labels"]]
        pos = [p for ex in batch for p in range(len(ex["input_ids"]))]
        return {
            "input_ids": torch.tensor([ids], dtype=torch.long),
            "labels": torch.tensor([labels], dtype=torch.long),
            "position_ids": torch.tensor([pos], dtype=torch.long),
            "use_cache": False,
        }


def collator(pad_token_id: int, packing: bool):
    """Training's collator: left padding by default, one packed row with ``packing``."""
    return PackCollator() if packing else PadCollator(pad_token_id, left=True)


def batch_tokens(batch: dict[str, torch.Tensor]) -> int:
    """Real (non-padding) tokens of a padded or packed batch."""
    mask = batch.get("attention_mask")
    return int(mask.sum()) if mask is not None else int(batch["input_ids"].numel())


def last_positions(width: int, keep: int, device=None) -> torch.Tensor:
    """``logits_to_keep`` as the indices of the last ``keep`` positions, not the int ``keep``.

    The int slices the hidden states into a non-contiguous view, which the CPU matmul serves by
    broadcasting the whole vocabulary matrix over the batch (a copy of it per row, forward and
    backward: a quarter of a training step on the default model); indexing gathers a
    contiguous tensor and the projection stays one matrix product. Same logits either way."""
    return torch.arange(width - keep, width, device=device)


def loss_positions(labels: torch.Tensor) -> torch.Tensor:
    """The positions the loss needs, in order: every answer token's and the one before it.

    The model's loss compares the logits at kept position k with the label at kept position
    k + 1; every answer position p is kept together with p - 1, so that pair is always (p - 1,
    p), and a label at p - 1 that is not an answer's carries no loss. Left-padded rows give the
    final window (:func:`answer_window`, the same indices as :func:`last_positions`); a packed
    row gives each example's answer with its predicting position."""
    answer = (labels != IGNORE_INDEX).any(dim=0)
    if not bool(answer.any()):
        return torch.arange(labels.shape[1], device=labels.device)
    keep = answer.clone()
    keep[:-1] |= answer[1:]
    return keep.nonzero().squeeze(1)


def crop_to_answers(batch: dict[str, torch.Tensor], indices: bool = True) -> dict:
    """A training batch whose loss projects only the answer positions to the vocabulary: labels
    gathered at :func:`loss_positions` and ``logits_to_keep`` naming them (``indices=False``:
    the int length of the final window, the slower slicing kept for A/B benchmarks, left
    padding only); the loss is unchanged."""
    labels = batch["labels"]
    if not indices:
        keep = answer_window(labels)
        return {**batch, "labels": labels[:, -keep:], "logits_to_keep": keep}
    kept = loss_positions(labels)
    return {**batch, "labels": labels[:, kept], "logits_to_keep": kept}


def answer_window(labels: torch.Tensor) -> int:
    """How many final positions hold every answer token and the position that predicts the
    first one: the logits the loss needs (``logits_to_keep``), whatever the padding side."""
    columns = (labels != IGNORE_INDEX).any(dim=0).nonzero()
    if columns.numel() == 0:
        return labels.shape[1]
    return labels.shape[1] - int(columns.min()) + 1
