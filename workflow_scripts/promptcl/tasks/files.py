"""Task readers: locate a task by its id and read a split into one common table.

Two on-disk formats are supported so the workflow can run both the SAPO paper's preprocessed
tasks and raw Super-NaturalInstructions tasks:

- ``sentence_label`` (the SAPO repository's layout): ``<root>/<task>/{train,dev,test}.json`` =
  list of ``{"sentence", "label"}``, with the
  prompt parts in ``<root>/instructions.json`` (``{task: {instruction, suffix, labels, ...}}``) or
  in ``<root>/<task>/instructions.json`` (a single ``{instruction, suffix, labels}`` dict).
- ``superni``: ``<root>/<task>/{train,dev,test}.json`` = full SuperNI task JSON; the instruction is
  the task ``Definition``; an optional instructions file (same layouts) adds ``suffix`` and
  ``labels`` and may override the instruction.

Every reader error names the file (and record index and field) so a broken data file can be
fixed without a debugger. Refused, because they train or score nothing sensible: an empty
instruction, an empty answer or label string, and, in a task with a label set, an answer that is
not one of its labels (compared as the metrics compare them: case and punctuation ignored). A
task without labels is a generation task (label and rank accuracy are NaN for it).
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd

from promptcl.analysis.metrics import normalize_answer

SPLITS = ("train", "dev", "test")
#: splits every task must have, with at least one record (dev is optional and unused)
REQUIRED_SPLITS = ("train", "test")
TABLE_COLUMNS = ["id", "input", "references", "instruction", "suffix", "labels"]
FORMATS = ("sentence_label", "superni")
INSTRUCTIONS_FILE = "instructions.json"


class TaskFormatError(ValueError):
    """A task or instructions file exists but does not have the expected structure."""


class TaskNotFoundError(LookupError):
    """A task id matches no task folder, or more than one."""


@dataclass(frozen=True)
class TaskSource:
    """A folder of tasks in one format (``config.yaml: task_sources``)."""

    format: str
    root: Path

    def __post_init__(self) -> None:
        if self.format not in FORMATS:
            raise ValueError(
                f"task source {self.root}: format must be one of {FORMATS}, got {self.format!r}"
            )
        object.__setattr__(self, "root", Path(self.root))


@dataclass(frozen=True)
class TaskFiles:
    """Where one resolved task's files are; reading happens later in :func:`read_split`."""

    task_id: str
    full_name: str
    format: str
    directory: Path
    splits: dict[str, Path] = field(hash=False)
    instructions: Path | None


# --------------------------------------------------------------------------- resolving


def _matches(name: str, task_id: str) -> bool:
    return name == task_id or name.startswith(task_id + "_")


def resolve_task(task_id: str, sources: Sequence[TaskSource]) -> TaskFiles:
    """Find the single task folder for ``task_id`` across all sources.

    A folder matches if its name equals ``task_id`` or starts with ``task_id + "_"``, so configs
    can use short ids ("task195"). An exact name match wins over prefix matches, so a full name
    stays addressable even when another folder extends it (``..._extraction`` vs
    ``..._extraction_ori``). Zero or several matches raise :class:`TaskNotFoundError`.
    """
    if not isinstance(task_id, str) or not task_id.strip():
        raise TaskNotFoundError(f"task id must be a non-empty string, got {task_id!r}")
    exact: list[tuple[TaskSource, Path]] = []
    prefix: list[tuple[TaskSource, Path]] = []
    for source in sources:
        if not source.root.is_dir():
            continue
        for child in sorted(source.root.iterdir()):
            if child.is_dir() and _matches(child.name, task_id):
                (exact if child.name == task_id else prefix).append((source, child))
    matches = exact or prefix
    if not matches:
        searched = ", ".join(
            f"{s.format}:{s.root}" + ("" if s.root.is_dir() else " (missing)") for s in sources
        )
        raise TaskNotFoundError(
            f"task {task_id!r} not found: no folder named {task_id!r} or starting with "
            f"{task_id + '_'!r} under [{searched}]"
        )
    if len(matches) > 1:
        found = ", ".join(f"{s.format}:{d}" for s, d in matches)
        raise TaskNotFoundError(
            f"task id {task_id!r} is ambiguous; it matches {len(matches)} folders: {found}. "
            "Use the full task name."
        )
    source, directory = matches[0]
    splits = {s: directory / f"{s}.json" for s in SPLITS if (directory / f"{s}.json").is_file()}
    return TaskFiles(
        task_id=task_id,
        full_name=directory.name,
        format=source.format,
        directory=directory,
        splits=splits,
        instructions=_find_instructions(source, directory),
    )


def _find_instructions(source: TaskSource, directory: Path) -> Path | None:
    """The file holding this task's prompt parts; the per-task file wins as the more specific."""
    own = directory / INSTRUCTIONS_FILE
    if own.is_file():
        return own
    shared = source.root / INSTRUCTIONS_FILE
    if shared.is_file():
        table = _load_json(shared)
        if not isinstance(table, dict):
            raise TaskFormatError(
                f"{shared}: expected a JSON object {{task name: {{instruction, suffix, labels}}}}, "
                f"got {type(table).__name__}"
            )
        if directory.name in table:
            return shared
    if source.format == "sentence_label":
        raise TaskFormatError(
            f"task {directory.name}: no instructions found; expected an entry "
            f"{directory.name!r} in {shared} or a file {own}"
        )
    return None


# --------------------------------------------------------------------------- reading


def _load_json(path: Path) -> Any:
    try:
        with open(path, encoding="utf-8") as fh:
            return json.load(fh)
    except FileNotFoundError:
        raise
    except (OSError, UnicodeDecodeError) as exc:
        raise TaskFormatError(f"{path}: cannot read file: {exc}") from exc
    except json.JSONDecodeError as exc:
        raise TaskFormatError(f"{path}: invalid JSON: {exc}") from exc
    except RecursionError:
        raise TaskFormatError(f"{path}: invalid JSON: nested too deeply") from None


def _instruction_entry(files: TaskFiles) -> dict[str, Any]:
    """This task's validated ``{instruction?, suffix, labels}`` (empty parts when no file)."""
    path = files.instructions
    if path is None:
        return {"suffix": "", "labels": []}
    data = _load_json(path)
    where = f"{path}"
    if path.parent != files.directory:  # shared file keyed by task name
        if not isinstance(data, dict) or files.full_name not in data:
            raise TaskFormatError(f"{path}: no entry for task {files.full_name!r}")
        data = data[files.full_name]
        where = f"{path}: entry {files.full_name!r}"
    if not isinstance(data, dict):
        raise TaskFormatError(f"{where}: expected a JSON object, got {type(data).__name__}")
    entry: dict[str, Any] = {}
    if "instruction" in data:
        if not isinstance(data["instruction"], str):
            raise TaskFormatError(f"{where}: field 'instruction' must be a string")
        if not data["instruction"].strip():
            raise TaskFormatError(f"{where}: field 'instruction' is empty")
        entry["instruction"] = data["instruction"]
    elif files.format == "sentence_label":
        raise TaskFormatError(f"{where}: field 'instruction' is missing")
    suffix = data.get("suffix", "")
    if suffix is None:
        suffix = ""
    if not isinstance(suffix, str):
        raise TaskFormatError(f"{where}: field 'suffix' must be a string")
    labels = data.get("labels", [])
    if labels is None:
        labels = []
    if not isinstance(labels, list) or not all(isinstance(lb, str) for lb in labels):
        raise TaskFormatError(f"{where}: field 'labels' must be a list of strings")
    blank = [i for i, lb in enumerate(labels) if not normalize_answer(lb)]
    if blank:
        raise TaskFormatError(
            f"{where}: field 'labels': entry {blank[0]} ({labels[blank[0]]!r}) is empty once "
            "case, punctuation and spaces are ignored, so no answer can match it"
        )
    entry["suffix"] = suffix
    entry["labels"] = list(labels)
    return entry


def _field_error(path: Path, index: int, name: str, problem: str) -> TaskFormatError:
    return TaskFormatError(f"{path}: record {index}: field {name!r} {problem}")


def _sentence_label_rows(
    path: Path, data: Any, files: TaskFiles, split: str
) -> list[tuple[str, str, list]]:
    if not isinstance(data, list):
        raise TaskFormatError(
            f"{path}: expected a JSON list of {{sentence, label}} records, "
            f"got {type(data).__name__}"
        )
    rows = []
    for i, rec in enumerate(data):
        if not isinstance(rec, dict):
            raise TaskFormatError(
                f"{path}: record {i}: expected an object, got {type(rec).__name__}"
            )
        for name in ("sentence", "label"):
            if name not in rec:
                raise _field_error(path, i, name, "is missing")
            if not isinstance(rec[name], str):
                raise _field_error(
                    path, i, name, f"must be a string, got {type(rec[name]).__name__}"
                )
        if not rec["label"].strip():
            raise _field_error(path, i, "label", "is empty (an answer cannot be empty)")
        rows.append((f"{files.full_name}-{split}-{i}", rec["sentence"], [rec["label"]]))
    return rows


def _superni_rows(
    path: Path, data: Any, files: TaskFiles, split: str
) -> list[tuple[str, str, list]]:
    if not isinstance(data, dict) or not isinstance(data.get("Instances"), list):
        raise TaskFormatError(
            f"{path}: expected a SuperNI task object with an 'Instances' list, got "
            + (f"keys {sorted(data)}" if isinstance(data, dict) else type(data).__name__)
        )
    rows = []
    for i, rec in enumerate(data["Instances"]):
        if not isinstance(rec, dict):
            raise TaskFormatError(
                f"{path}: record {i}: expected an object, got {type(rec).__name__}"
            )
        if "input" not in rec:
            raise _field_error(path, i, "input", "is missing")
        if not isinstance(rec["input"], str):
            raise _field_error(
                path, i, "input", f"must be a string, got {type(rec['input']).__name__}"
            )
        if "output" not in rec:
            raise _field_error(path, i, "output", "is missing")
        out = rec["output"]
        if isinstance(out, str):
            refs = [out]
        elif isinstance(out, list):
            if not out:
                raise _field_error(path, i, "output", "is an empty list")
            if not all(isinstance(o, str) for o in out):
                raise _field_error(path, i, "output", "must contain only strings")
            refs = list(out)
        else:
            raise _field_error(
                path,
                i,
                "output",
                f"must be a string or a list of strings, got {type(out).__name__}",
            )
        empty = [j for j, ref in enumerate(refs) if not ref.strip()]
        if empty:
            entry = f" (entry {empty[0]})" if isinstance(out, list) else ""
            raise _field_error(
                path, i, "output", f"holds an empty answer{entry} (an answer cannot be empty)"
            )
        # Old SuperNI releases have no instance ids; fall back to a positional one.
        rid = rec.get("id", f"{files.full_name}-{split}-{i}")
        if not isinstance(rid, str) or not rid:
            raise _field_error(path, i, "id", "must be a non-empty string")
        rows.append((rid, rec["input"], refs))
    return rows


def _superni_definition(path: Path, data: dict) -> str:
    if "Definition" not in data:
        raise TaskFormatError(
            f"{path}: field 'Definition' is missing (and no instruction is "
            "given in an instructions file)"
        )
    definition = data["Definition"]
    if isinstance(definition, list) and definition and isinstance(definition[0], str):
        definition = definition[0]
    if isinstance(definition, str):
        if not definition.strip():
            raise TaskFormatError(f"{path}: field 'Definition' is empty (the task's instruction)")
        return definition
    raise TaskFormatError(
        f"{path}: field 'Definition' must be a string or a non-empty list of strings"
    )


def _unicode_error(text: str) -> bool:
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return True
    return False


def _check_text(path: Path, rows: list, entry: dict, instruction: str, files: TaskFiles) -> None:
    """Every string must be valid Unicode: a lone surrogate escape (``\\ud800``) parses as JSON
    but cannot be written to a table, so it would fail only when the job writes its output."""
    bad = "is not valid Unicode text (a lone surrogate escape such as \\ud800)"
    answer = "label" if files.format == "sentence_label" else "output"
    for i, (rid, text, refs) in enumerate(rows):
        for name, value in (("id", rid), ("input", text), (answer, "".join(refs))):
            if _unicode_error(value):
                raise _field_error(path, i, name, bad)
    source = files.instructions or path
    for name in ("suffix", "labels"):
        value = entry[name]
        if _unicode_error(value if isinstance(value, str) else "".join(value)):
            raise TaskFormatError(f"{source}: field {name!r} {bad}")
    if _unicode_error(instruction):
        raise TaskFormatError(f"{source if 'instruction' in entry else path}: instruction {bad}")


def _check_labels(path: Path, rows: list, labels: list[str], files: TaskFiles) -> None:
    """In a task with a label set, every gold answer (the first reference, the training target)
    must be a label, or label accuracy silently scores it 0."""
    if not labels:
        return
    known = {normalize_answer(lb) for lb in labels}
    name = "label" if files.format == "sentence_label" else "output"
    for i, (_, _, refs) in enumerate(rows):
        if normalize_answer(refs[0]) not in known:
            raise _field_error(
                path,
                i,
                name,
                f"{refs[0]!r} is not one of the task's labels {labels} (from "
                f"{files.instructions}); add it there, or give the task no labels (a generation "
                "task)",
            )


def read_split(files: TaskFiles, split: str) -> pd.DataFrame:
    """Read one split into a table with exactly :data:`TABLE_COLUMNS`.

    Both formats end up in the same shape so prompting, training and scoring never need to know
    where a task came from: ``references`` is always a list of strings and ``labels`` is empty for
    generation tasks.
    """
    if split not in SPLITS:
        raise ValueError(f"split must be one of {SPLITS}, got {split!r}")
    path = files.splits.get(split, files.directory / f"{split}.json")
    if not path.is_file():
        raise FileNotFoundError(f"task {files.full_name}: split file {path} does not exist")
    data = _load_json(path)
    entry = _instruction_entry(files)
    if files.format == "sentence_label":
        rows = _sentence_label_rows(path, data, files, split)
        instruction = entry["instruction"]
    elif files.format == "superni":
        rows = _superni_rows(path, data, files, split)
        instruction = entry.get("instruction")
        if instruction is None:
            instruction = _superni_definition(path, data)
    else:
        raise ValueError(f"unknown task format {files.format!r}; expected one of {FORMATS}")
    seen: dict[str, int] = {}
    for i, (rid, _, _) in enumerate(rows):
        if rid in seen:
            raise _field_error(path, i, "id", f"duplicates the id of record {seen[rid]} ({rid!r})")
        seen[rid] = i
    _check_text(path, rows, entry, instruction, files)
    _check_labels(path, rows, entry["labels"], files)
    table = {
        "id": [r[0] for r in rows],
        "input": [r[1] for r in rows],
        "references": [r[2] for r in rows],
        "instruction": [instruction] * len(rows),
        "suffix": [entry["suffix"]] * len(rows),
        "labels": [list(entry["labels"]) for _ in rows],
    }
    return pd.DataFrame(table, columns=TABLE_COLUMNS).astype(
        {"id": object, "input": object, "instruction": object, "suffix": object}
    )
