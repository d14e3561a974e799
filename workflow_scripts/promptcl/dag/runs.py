"""Runs (sequence × method × strategy × seed) and the config checks the JSON schema cannot
express, made while Snakemake parses the workflow (by :class:`promptcl.dag.plan.WorkflowPlan`): a
bad config stops before any job runs, with a message that names the offending key or file.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass
from itertools import product
from pathlib import Path

from promptcl.errors import ConfigError, check_accumulation_keys, hf_folder
from promptcl.prompts.prompting import PromptFormat
from promptcl.store.paths import RESERVED
from promptcl.tasks.files import (
    REQUIRED_SPLITS,
    SPLITS,
    TaskFiles,
    TaskFormatError,
    TaskNotFoundError,
    TaskSource,
    resolve_task,
)

RUN_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.+-]*$")


@dataclass(frozen=True)
class Run:
    """One continual-learning run: a sequence trained with a method and prompt strategy."""

    name: str
    sequence: str
    method: str
    strategy: str
    seed: int
    tasks: tuple[str, ...]
    unseen: tuple[str, ...]
    #: (run, k): stages 1..k are that run's (the prompt-impact study branches off a shared T1;
    #: methods that start as IncLoRA share its stage 1)
    fork: tuple[str, int] | None = None

    @property
    def stages(self) -> int:
        return len(self.tasks)

    @property
    def eval_tasks(self) -> tuple[str, ...]:
        return self.tasks + self.unseen


def run_name(sequence: str, method: str, strategy: str, seed: int) -> str:
    return f"{sequence}-{method}-{strategy.replace(':', '_')}-s{seed}"


def expand_runs(config: dict) -> dict[str, Run]:
    """Runs from ``runs`` (the product of its lists) plus any explicit ``runs.extra`` entries
    (none is fine here; the plan requires runs or a study)."""
    sequences = config["sequences"]
    spec = config["runs"]
    combos = list(
        product(spec["sequences"], spec["methods"], spec["prompt_strategies"], spec["seeds"])
    )
    runs: dict[str, Run] = {}
    for i, extra in enumerate(spec.get("extra") or []):
        combos.append(
            (extra["sequence"], extra["method"], extra["prompt_strategy"], extra["seed"], i)
        )
    for combo in combos:
        seq, method, strategy, seed = combo[:4]
        key = "runs.sequences" if len(combo) == 4 else f"runs.extra[{combo[4]}].sequence"
        if seq not in sequences:
            raise ConfigError(f"{key}: unknown sequence '{seq}' (defined: {sorted(sequences)})")
        name = run_name(seq, method, strategy, seed)
        if not RUN_NAME.match(name) or name in RESERVED:
            raise ConfigError(f"{key}: run name '{name}' is not usable as a results folder")
        entry = sequences[seq]
        runs[name] = Run(
            name=name,
            sequence=seq,
            method=method,
            strategy=strategy,
            seed=int(seed),
            tasks=tuple(entry["tasks"]),
            unseen=tuple(entry.get("unseen") or ()),
        )
    return runs


def check_sequences(config: dict) -> None:
    for name, entry in config["sequences"].items():
        tasks, unseen = list(entry["tasks"]), list(entry.get("unseen") or [])
        dup = sorted({t for t in tasks if tasks.count(t) > 1})
        if dup:
            raise ConfigError(f"sequences.{name}.tasks: tasks repeated: {dup}")
        both = sorted(set(tasks) & set(unseen))
        if both:
            raise ConfigError(f"sequences.{name}.unseen: also trained in the sequence: {both}")


def check_training(config: dict) -> None:
    training = config["training"]
    check_accumulation_keys(training.get("grad_accum"), training.get("global_batch_size"))


def check_values(config: dict) -> None:
    """Values the schema allows one by one that cannot work (alone or together): refused now,
    rather than after the model is loaded or the paraphrases are paid for."""
    caps = config["data"]["caps"]
    for split in REQUIRED_SPLITS:
        if (caps.get(split) or {}).get("n") == 0:
            raise ConfigError(
                f"data.caps.{split}.n: 0 keeps no {split} instance of any task; use null (all) "
                "or a positive number (only data.caps.dev.n may be 0)"
            )
    steps = config["training"]["max_steps"]
    if steps != -1 and steps < 1:
        raise ConfigError(f"training.max_steps: {steps}; use -1 (train by epochs) or >= 1 steps")
    try:
        PromptFormat.from_config(config["prompt"])
    except ValueError as err:
        raise ConfigError(str(err)) from None
    prompts, heldout = config["prompts"], config["evaluation"]["heldout_prompts"]
    bounds = prompts["validation"]
    for low, high in (("min_chars", "max_chars"), ("min_length_ratio", "max_length_ratio")):
        if bounds[low] > bounds[high]:
            raise ConfigError(
                f"prompts.validation.{low}: {bounds[low]} exceeds {high} {bounds[high]}; every "
                "paraphrase would be rejected"
            )
    trainable = prompts["candidates"] - heldout
    if prompts["min_valid"] > trainable:
        raise ConfigError(
            f"prompts.min_valid: {prompts['min_valid']} valid paraphrases can never be reached: "
            f"prompts.candidates {prompts['candidates']} minus evaluation.heldout_prompts "
            f"{heldout} leaves at most {max(trainable, 0)} to train with"
        )


def check_strategies(config: dict, runs: Iterable[Run]) -> None:
    """A ``fixed:<id>`` strategy must name a candidate the config can make."""
    most = config["prompts"]["candidates"]
    for run in runs:
        base, _, arg = run.strategy.partition(":")
        if base == "fixed" and arg.isdigit() and int(arg) > most:
            raise ConfigError(
                f"runs.prompt_strategies: {run.strategy} (run {run.name}) names candidate "
                f"{arg}, but prompts.candidates {most} makes candidates 0..{most}"
            )


def check_model_folders(config: dict, base: Path) -> None:
    """``model.path`` of ``source: local`` (a local paraphraser's folder is checked by its
    backend, :mod:`promptcl.prompts.backends.local`)."""
    if config["model"]["source"] == "local":
        hf_folder("model.path", config["model"].get("path"), base)


def model_source_file(config: dict, base: Path) -> Path | None:
    """The GGUF file of ``model.source: gguf`` (checked now, converted by prepare_model)."""
    model = config["model"]
    if model["source"] != "gguf":
        return None
    if not model.get("path"):
        raise ConfigError("model.path: a GGUF file is required when model.source is 'gguf'")
    path = Path(model["path"]).expanduser()
    path = path if path.is_absolute() else base / path
    if not path.is_file():
        raise ConfigError(f"model.path: GGUF file {path} does not exist")
    return path


def task_sources(config: dict, base: Path) -> list[TaskSource]:
    """Task roots; relative roots are relative to the workflow directory."""
    sources = []
    for i, src in enumerate(config["data"]["sources"]):
        root = Path(src["root"])
        root = root if root.is_absolute() else base / root
        if not root.is_dir():
            raise ConfigError(f"data.sources[{i}].root: folder {root} does not exist")
        sources.append(TaskSource(format=src["format"], root=root))
    return sources


def resolve_tasks(runs: Iterable[Run], sources: list[TaskSource]) -> dict[str, TaskFiles]:
    """Every task a run trains or evaluates, located on disk now (not when a job starts)."""
    found: dict[str, TaskFiles] = {}
    for run in runs:
        for task in run.eval_tasks:
            if task in found:
                continue
            try:
                files = resolve_task(task, sources)
            except TaskNotFoundError as err:
                raise ConfigError(f"sequences.{run.sequence}: {err}") from err
            except TaskFormatError as err:
                raise ConfigError(f"task '{task}': {err}") from err
            missing = [s for s in REQUIRED_SPLITS if s not in files.splits]
            if missing:
                expected = ", ".join(str(files.directory / f"{s}.json") for s in missing)
                raise ConfigError(f"task '{task}': missing task file(s) {expected}")
            found[task] = files
    return found


def task_input_files(files: TaskFiles) -> list[str]:
    """The source files a task's table depends on (splits + instructions)."""
    paths = [str(files.splits[s]) for s in SPLITS if s in files.splits]
    if files.instructions is not None:
        paths.append(str(files.instructions))
    return paths
