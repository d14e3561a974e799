"""A stage's training examples: the task table encoded once per candidate instruction, and the
dataset that serves each example with the candidate its prompt strategy picks."""

from __future__ import annotations

from collections.abc import Sequence

import pandas as pd
import torch

from promptcl.prompts.prompting import PromptFormat, encode_rows


def encode_table(
    tokenizer,
    fmt: PromptFormat,
    table: pd.DataFrame,
    instructions: Sequence[str] | None = None,
) -> list[dict]:
    """Training examples (answer = first reference); ``instructions`` overrides per row."""
    return [
        {"input_ids": enc.input_ids, "labels": enc.labels}
        for enc in encode_rows(tokenizer, fmt, table, instructions)
    ]


def encode_candidates(
    tokenizer,
    fmt: PromptFormat,
    table: pd.DataFrame,
    candidates: dict[int, str],
) -> dict[int, list[dict]]:
    """The table encoded once per candidate instruction."""
    return {
        cid: encode_table(tokenizer, fmt, table, [text] * len(table))
        for cid, text in candidates.items()
    }


class PromptedDataset(torch.utils.data.Dataset):
    """Training examples whose instruction is chosen per (epoch, example) at fetch time.

    Every example is pre-encoded with every candidate instruction, so a strategy only picks a
    candidate id: ``choose(epoch, index)``. ``epoch`` is set by :func:`epoch_tracker` before the
    epoch's batches are drawn, which keeps draws independent of resumes and call order.
    """

    def __init__(self, encodings: dict[int, list[dict]], choose):
        sizes = {len(v) for v in encodings.values()}
        if len(sizes) != 1:
            raise ValueError("every candidate must encode the same examples")
        self.encodings = encodings
        self.choose = choose
        self.epoch = 0
        self.size = sizes.pop()

    def __len__(self) -> int:
        return self.size

    def __getitem__(self, index: int) -> dict:
        return self.encodings[self.choose(self.epoch, index)][index]


class MixedDataset(torch.utils.data.Dataset):
    """Several prompted datasets served as one (the current task first, then jointly trained or
    replayed tasks); setting ``epoch`` sets it on every part."""

    def __init__(self, parts: Sequence[PromptedDataset]):
        if not parts:
            raise ValueError("a mixed dataset needs at least one part")
        self.parts = list(parts)
        self.offsets = [0]
        for part in self.parts:
            self.offsets.append(self.offsets[-1] + len(part))

    @property
    def epoch(self) -> int:
        return self.parts[0].epoch

    @epoch.setter
    def epoch(self, value: int) -> None:
        for part in self.parts:
            part.epoch = value

    def __len__(self) -> int:
        return self.offsets[-1]

    def __getitem__(self, index: int) -> dict:
        if not 0 <= index < len(self):
            raise IndexError(index)
        for i, part in enumerate(self.parts):
            if index < self.offsets[i + 1]:
                return part[index - self.offsets[i]]
        raise IndexError(index)


def epoch_tracker(dataset: PromptedDataset | MixedDataset):
    """A TrainerCallback that tells the dataset which epoch its batches are drawn for."""
    from transformers import TrainerCallback

    class EpochTracker(TrainerCallback):
        def on_epoch_begin(self, args, state, control, **kwargs):
            dataset.epoch = int(state.epoch or 0)

    return EpochTracker()
