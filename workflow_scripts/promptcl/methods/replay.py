"""``replay`` (rehearsal): one LoRA continued across stages, as ``seqlora``, whose stage k mixes
examples of the earlier tasks' training data into task k's data.

Each earlier task has a buffer: one fixed seeded permutation of its training rows (from the run
seed and the task), of which the buffer is the prefix its first replay stage (the stage after its
own) replays. Every later stage replays a prefix of the same permutation, capped at the buffer, so
a task never contributes more distinct examples over the run than its buffer holds. A replayed
example keeps the prompt its own stage trained with (from that stage's record; ``replay.prompt:
original`` replays with the original instruction instead). The run's prompt strategy chooses only
the current task's prompt, and SAPO scores the current task.
"""

from __future__ import annotations

import math
import zlib
from dataclasses import dataclass

import numpy as np

from promptcl.methods.base import ExtraData
from promptcl.methods.seqlora import SeqLoRA

PROMPTS = ("trained", "original")


@dataclass(frozen=True)
class ReplaySpec:
    """``config.yaml: replay``: how many earlier examples a stage replays, and with which prompt.

    ``examples`` (a count) or ``fraction`` (of the current task's training examples) sets the
    total per stage, split evenly over the earlier tasks; ``max_per_task`` caps each task."""

    examples: int | None = 32
    fraction: float | None = None
    max_per_task: int | None = None
    prompt: str = "trained"

    @classmethod
    def from_config(cls, cfg: dict) -> ReplaySpec:
        unknown = set(cfg) - {"examples", "fraction", "max_per_task", "prompt"}
        if unknown:
            raise ValueError(f"replay: unknown keys {sorted(unknown)}")
        examples, fraction = cfg.get("examples"), cfg.get("fraction")
        if (examples is None) == (fraction is None):
            raise ValueError("replay: set exactly one of replay.examples and replay.fraction")
        if examples is not None and (isinstance(examples, bool) or int(examples) < 0):
            raise ValueError(f"replay.examples: expected an integer >= 0, got {examples!r}")
        if fraction is not None and not 0 <= float(fraction) <= 10:
            raise ValueError(f"replay.fraction: expected a number in [0, 10], got {fraction!r}")
        cap = cfg.get("max_per_task")
        if cap is not None and int(cap) < 0:
            raise ValueError(f"replay.max_per_task: expected an integer >= 0, got {cap!r}")
        prompt = cfg.get("prompt", "trained")
        if prompt not in PROMPTS:
            raise ValueError(f"replay.prompt: expected one of {PROMPTS}, got {prompt!r}")
        return cls(
            examples=None if examples is None else int(examples),
            fraction=None if fraction is None else float(fraction),
            max_per_task=None if cap is None else int(cap),
            prompt=prompt,
        )

    def total(self, current: int) -> int:
        """Replayed examples per stage for a current task of ``current`` training examples."""
        if self.examples is not None:
            return self.examples
        return math.floor(self.fraction * current + 0.5)

    def counts(self, current: int, earlier: list[int]) -> list[int]:
        """Examples replayed from each earlier task (of sizes ``earlier``): the total split
        evenly (the first tasks take the remainder), each capped by ``max_per_task`` and by the
        task's size. A capped task's share is not moved to the others."""
        if not earlier:
            return []
        share, rest = divmod(self.total(current), len(earlier))
        out = []
        for i, size in enumerate(earlier):
            n = share + (1 if i < rest else 0)
            if self.max_per_task is not None:
                n = min(n, self.max_per_task)
            out.append(min(n, size))
        return out


def replay_order(size: int, seed: int, task: str) -> list[int]:
    """The one fixed permutation of a task's ``size`` training rows that every stage replays a
    prefix of: ``default_rng([seed, crc32(task)])``, independent of the stage, so the buffer a
    task's first replay stage draws is the one every later stage draws from."""
    rng = np.random.default_rng([int(seed), zlib.crc32(task.encode())])
    return [int(i) for i in rng.permutation(size)]


def seeded_rows(size: int, n: int, *key: int) -> list[int]:
    """``n`` of ``size`` rows (all when fewer) without replacement, sorted, from
    ``default_rng(key)``: a memory batch that a resumed job and every DDP rank draw alike."""
    rng = np.random.default_rng([int(k) for k in key])
    return sorted(int(i) for i in rng.choice(size, size=min(n, size), replace=False))


def replay_rows(size: int, count: int, seed: int, task: str) -> list[int]:
    """The first ``count`` rows of :func:`replay_order`, in table order: a stage's sample of an
    earlier task; a smaller ``count`` gives a subset of a larger one's."""
    if not 0 <= count <= size:
        raise ValueError(f"cannot replay {count} of {size} examples")
    return sorted(replay_order(size, seed, task)[:count])


def buffer_sizes(spec: ReplaySpec, sizes: dict[int, int]) -> dict[int, int]:
    """Each earlier task's buffer, by stage: its share at the stage after its own (``spec.counts``
    over the tasks of the stages before that one). No stage replays more of the task: a larger
    share later (``replay.fraction`` with a larger current task) is capped at the buffer.

    ``sizes`` maps every stage up to the current one to its task's training size (the current
    stage's included: it is the stage after the last earlier task's). Replay's stage k replays
    every stage before it, so the tasks replayed at stage s are those of the stages < s."""
    stages = sorted(sizes)
    out = {}
    for i, stage in enumerate(stages[:-1]):
        first = stages[i + 1]
        if first != stage + 1:
            raise ValueError(f"replay: no stage {stage + 1} to size the buffer of stage {stage}")
        before = stages[: i + 1]
        out[stage] = spec.counts(sizes[first], [sizes[s] for s in before])[-1]
    return out


class Replay(SeqLoRA):
    name = "replay"
    config_sections = ("replay",)

    def check_config(self, config: dict) -> None:
        ReplaySpec.from_config(config["replay"])

    def shares_first_stage(self, config: dict) -> bool:
        return True  # nothing to replay yet: seqlora's (IncLoRA's) stage 1

    def replayed_stages(self, stage: int) -> list[int]:
        return list(range(1, stage))

    def extra_training_data(self, spec, tokenizer, current: int) -> ExtraData:
        """The earlier tasks' samples (:func:`replay_parts`); the stage record's ``replayed``."""
        companions = [c for c in spec.job.companions if c["role"] == "replay"]
        if not companions:
            return ExtraData()
        options = ReplaySpec.from_config(spec.job.options["replay"])
        records, parts = replay_parts(options, companions, current, tokenizer, spec.fmt, spec.seed)
        return ExtraData(parts=parts, record={"replayed": records})


def replayed_candidate(record_dir: str, task: str) -> int:
    """The candidate ``task`` trained with, from its stage's record."""
    import json
    from pathlib import Path

    from promptcl.store import paths

    record = json.loads((Path(record_dir) / paths.STAGE_RECORD).read_text())
    prompts = record.get("evaluation_prompts") or {record["task"]: record["evaluation_prompt"]}
    if task not in prompts:
        raise ValueError(f"the stage record in {record_dir} does not say how {task} was trained")
    return int(prompts[task]["candidate_id"])


def replay_parts(
    spec: ReplaySpec,
    companions: list[dict],
    current: int,
    tokenizer,
    fmt,
    seed: tuple[int, int],
) -> tuple[list[dict], list]:
    """(what was replayed, one dataset per earlier task) for stage ``seed[1]`` whose current
    task has ``current`` training examples; ``companions`` as in
    :class:`promptcl.train.job.StageJob`.

    Task j replays min(its share here, its buffer) rows: its share at stage j + 1 fixes the
    buffer, so the stage-(j + 1) task's size is needed (the current one when j + 1 is this stage,
    else an earlier companion's; with ``replay.fraction`` the share depends on it)."""
    import pandas as pd

    from promptcl.prompts import candidates as cands
    from promptcl.train.data import PromptedDataset, encode_table

    if not companions:
        return [], []
    companions = sorted(companions, key=lambda c: int(c["stage"]))
    tables = [pd.read_parquet(c["train"]) for c in companions]
    sizes = {int(c["stage"]): len(t) for c, t in zip(companions, tables, strict=True)}
    if int(seed[1]) in sizes:
        raise ValueError(f"replay: stage {seed[1]} cannot replay itself")
    buffers = buffer_sizes(spec, {**sizes, int(seed[1]): current})
    counts = spec.counts(current, [len(t) for t in tables])
    records, parts = [], []
    for companion, table, share in zip(companions, tables, counts, strict=True):
        stage = int(companion["stage"])
        n = min(share, buffers[stage])
        rows = replay_rows(len(table), n, seed[0], companion["task"])
        cid = 0
        if spec.prompt == "trained":
            cid = replayed_candidate(companion["record"], companion["task"])
        text = cands.text_of(pd.read_parquet(companion["candidates"]), cid)
        records.append(
            {
                "task": companion["task"],
                "stage": stage,
                "examples": n,
                "buffer": buffers[stage],
                "candidate_id": cid,
                "rows": rows,
            }
        )
        if n == 0:
            continue
        sample = table.iloc[rows].reset_index(drop=True)
        encodings = {cid: encode_table(tokenizer, fmt, sample, [text] * n)}
        parts.append(PromptedDataset(encodings, lambda epoch, index, cid=cid: cid))
    return records, parts


def memory_examples(spec: ReplaySpec, stage, tokenizer, current: int) -> tuple[list[dict], list]:
    """(what each earlier task holds, its encoded examples in one list): the episodic memory
    of A-GEM and I-LoRA, sampled as replay's buffers are (:func:`replay_parts`, each example
    with the prompt its own stage trained with) but kept out of the training data.

    ``stage``: the :class:`promptcl.train.job.StageSpec` whose companions name the tasks."""
    companions = [c for c in stage.job.companions if c["role"] == "replay"]
    records, parts = replay_parts(spec, companions, current, tokenizer, stage.fmt, stage.seed)
    return records, [part[i] for part in parts for i in range(len(part))]
