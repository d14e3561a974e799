"""Artifacts that prove they are whole: written atomically, recorded with a checksum, verified
by every job that reads them (torch-free).

Snakemake notices a missing output but not a damaged one: a file truncated by a full disk or a
partial copy, or changed inside a ``directory()`` output, still counts as done. So what the
library writes goes to a temporary name in the same folder, is flushed to disk and renamed into
place (a killed job or a full disk never leaves a final-named file behind), and is recorded:

- a file by a sidecar ``<file>.sha256.json`` (its size, sha256 and the rule that writes it);
- a folder (an adapter, a stage's predictions) by ``promptcl_manifest.json`` inside it, listing
  every file; the folder is built under a temporary name and renamed once complete.

A consumer calls :func:`verify_inputs` (or :func:`read_parquet`, or :func:`verify_path`) and a
mismatch fails with :class:`DamagedArtifactError` naming the file, the rule that writes it and
the command that redoes it. Artifacts written before these records existed are only checked for
structure (a parquet footer, a safetensors header). ``python -m promptcl verify`` checks a whole
results folder (:mod:`promptcl.store.verify`).
"""

from __future__ import annotations

import glob
import hashlib
import json
import os
import re
import secrets
import shutil
import struct
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path

from promptcl.store import paths

MANIFEST = "promptcl_manifest.json"
SIDECAR = ".sha256.json"
TEMP_MARK = ".tmp-"
#: path pattern -> the rule that writes it (directories first: files inside them belong to them)
PRODUCERS = {
    paths.MODEL_DIR: "prepare_model",
    paths.ADAPTER: "train_stage",
    paths.PREDICTIONS: "predict_stage",
    paths.LIKELIHOOD: "likelihood_stage",
    paths.COMBINED: "combine_adapters",
    paths.MODEL_MANIFEST: "prepare_model",
    paths.TASK_SPLIT: "prepare_tasks",
    paths.TASK_META: "prepare_tasks",
    paths.CANDIDATES: "paraphrase_prompts",
    paths.BASE_SCORES: "score_prompts_base",
    paths.ZERO_SHOT: "evaluate_base",
    paths.ZERO_SHOT_LIKELIHOOD: "likelihood_base",
    paths.STAGE_SCORES: "score_prompts",
    paths.TRAIN_LOG: "train_stage",
    paths.MATRIX: "aggregate_run",
    paths.RUN_SUMMARY: "aggregate_run",
    paths.RUN_SUMMARY_TEXT: "aggregate_run",
    paths.INSTANCE_SCORES: "aggregate_run",
    paths.SUMMARY: "summarize",
    paths.SUMMARY_TEXT: "summarize",
    paths.SEEDS: "compare_runs",
    paths.COMPARISONS: "compare_runs",
    paths.COMPARISONS_BY_SEED: "compare_runs",
    paths.STUDY_MEASURES: "measure_candidates",
    paths.STUDY_GRADIENTS: "measure_candidates",
    paths.STUDY_OUTCOMES: "study_outcomes",
    paths.STUDY_TABLE: "analyze_study",
}


class DamagedArtifactError(RuntimeError):
    """An artifact does not match its record, or cannot be read; the message says what to rerun."""


# --- who writes what -----------------------------------------------------------------------------


def _pattern_regex(pattern: str) -> re.Pattern:
    reserved = "|".join(sorted(paths.RESERVED))
    parts = re.split(r"(\{\w+\})", pattern)
    out = []
    for part in parts:
        if part == "{stage}":
            out.append(r"\d+")
        elif part == "{run}":
            out.append(rf"(?!(?:{reserved})/)[^/]+")
        elif part.startswith("{"):
            out.append(r"[^/]+")
        else:
            out.append(re.escape(part))
    return re.compile("".join(out))


_PRODUCERS = [(_pattern_regex(p), rule) for p, rule in PRODUCERS.items()]


def producer(path: str | os.PathLike) -> tuple[str | None, str]:
    """(the rule that writes ``path``, the output Snakemake should redo): the declared output is
    the file itself or the ``directory()`` output holding it, as a workflow-relative path."""
    parts = Path(path).parts
    for start in [i for i, p in enumerate(parts) if p == paths.RESULTS][::-1]:
        rel = parts[start:]
        for end in range(len(rel), 0, -1):
            candidate = "/".join(rel[:end])
            for regex, rule in _PRODUCERS:
                if regex.fullmatch(candidate):
                    return rule, candidate
    return None, str(path)


def redo_command(targets: Iterable[str]) -> str:
    """What redoes these outputs (and, through Snakemake, everything that read them)."""
    return "snakemake --cores all --forcerun " + " ".join(sorted(set(targets)))


def damaged(path: Path, problem: str, rule: str | None = None) -> DamagedArtifactError:
    found, target = producer(path)
    rule = rule or found
    writer = f"written by rule {rule}" if rule else "not written by a known rule"
    return DamagedArtifactError(
        f"{path} is damaged ({problem}): {writer}; redo with: {redo_command([target])} "
        "(with the --configfile/--profile of the run)"
    )


# --- writing -------------------------------------------------------------------------------------


def _fsync(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _remove_leftovers(final: Path) -> None:
    """Temporary files of this output from a killed earlier attempt (one writer per output)."""
    for stale in final.parent.glob(f".{glob.escape(final.name)}{TEMP_MARK}*"):
        shutil.rmtree(stale) if stale.is_dir() else stale.unlink(missing_ok=True)


def _temp_name(final: Path) -> Path:
    return final.parent / f".{final.name}{TEMP_MARK}{os.getpid()}-{secrets.token_hex(3)}"


@contextmanager
def atomic_path(final: str | os.PathLike) -> Iterator[Path]:
    """A temporary path to write ``final``'s content to; on success it is flushed to disk and
    renamed to ``final``, on any error (a full disk included) removed, so ``final`` is either the
    old file or the complete new one."""
    final = Path(final)
    final.parent.mkdir(parents=True, exist_ok=True)
    _remove_leftovers(final)
    tmp = _temp_name(final)
    try:
        yield tmp
        _fsync(tmp)
        os.replace(tmp, final)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    _fsync(final.parent)


def file_record(path: Path) -> dict:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return {"sha256": digest.hexdigest(), "size": path.stat().st_size}


def sidecar(path: Path) -> Path:
    return path.parent / f"{path.name}{SIDECAR}"


def _write_json_plain(path: Path, obj) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(json.dumps(obj, indent=2, sort_keys=True) + "\n")


def record_file(path: str | os.PathLike, rule: str | None = None) -> None:
    """Write ``path``'s checksum record beside it."""
    path = Path(path)
    record = {**file_record(path), "rule": rule or producer(path)[0]}
    _write_json_plain(sidecar(path), record)


def write_with(final: str | os.PathLike, write: Callable[[Path], None], rule=None) -> None:
    """``write(temporary path)``, then the atomic rename and the checksum record."""
    final = Path(final)
    sidecar(final).unlink(missing_ok=True)  # a stale record would describe the old content
    with atomic_path(final) as tmp:
        write(tmp)
    record_file(final, rule)


def write_parquet(table, final: str | os.PathLike, rule: str | None = None) -> None:
    write_with(final, lambda tmp: table.to_parquet(tmp, index=False), rule)


def write_text(final: str | os.PathLike, text: str, rule: str | None = None) -> None:
    write_with(final, lambda tmp: tmp.write_text(text), rule)


def write_json(final: str | os.PathLike, obj, rule: str | None = None) -> None:
    write_text(final, json.dumps(obj, indent=2) + "\n", rule)


def _files(folder: Path) -> list[Path]:
    return sorted(p for p in folder.rglob("*") if p.is_file() and p.name != MANIFEST)


def write_manifest(folder: str | os.PathLike, rule: str | None = None) -> None:
    """Record every file of a finished folder (written last: a folder without it is unfinished
    or from before these records)."""
    folder = Path(folder)
    files = {}
    for file in _files(folder):
        _fsync(file)
        files[file.relative_to(folder).as_posix()] = file_record(file)
    _write_json_plain(folder / MANIFEST, {"rule": rule or producer(folder)[0], "files": files})


def replace_dir(src: Path, dst: Path) -> None:
    """Rename the folder ``src`` to ``dst``, replacing an existing ``dst`` as a whole."""
    old = None
    if dst.exists():
        old = _temp_name(dst)
        os.replace(dst, old)
    os.replace(src, dst)
    _fsync(dst.parent)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


@contextmanager
def staged_dir(final: str | os.PathLike, rule: str | None = None) -> Iterator[Path]:
    """A temporary folder to build ``final`` in; on success its manifest is written and it is
    renamed to ``final``, on any error removed (no final-named folder is ever half written)."""
    final = Path(final)
    final.parent.mkdir(parents=True, exist_ok=True)
    _remove_leftovers(final)
    staging = _temp_name(final)
    staging.mkdir()
    try:
        yield staging
        write_manifest(staging, rule or producer(final)[0])
        replace_dir(staging, final)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise


# --- verifying -----------------------------------------------------------------------------------


def _compare(path: Path, record: dict, rule: str | None) -> None:
    if not path.is_file():
        raise damaged(path, "missing, though its record lists it", rule)
    size = path.stat().st_size
    if size != record["size"]:
        what = "truncated" if size < record["size"] else "size differs"
        raise damaged(path, f"{what}: {size} bytes, recorded {record['size']}", rule)
    if file_record(path)["sha256"] != record["sha256"]:
        raise damaged(path, "content differs from its recorded sha256", rule)


def check_structure(path: Path) -> None:
    """For files without a record: a parquet must have its footer, a safetensors file a header
    that accounts for its size, a JSON file must parse."""
    try:
        if path.suffix == ".parquet":
            import pyarrow.parquet as pq

            pq.read_metadata(path)
        elif path.suffix == ".safetensors":
            _check_safetensors(path)
        elif path.suffix == ".json":
            json.loads(path.read_text())
    except DamagedArtifactError:
        raise
    except Exception as err:  # pyarrow, json and OS errors all mean: cannot be read
        raise damaged(path, f"unreadable: {type(err).__name__}: {err}") from None


def _check_safetensors(path: Path) -> None:
    size = path.stat().st_size
    with open(path, "rb") as fh:
        head = fh.read(8)
        if len(head) < 8:
            raise damaged(path, f"truncated: {size} bytes, no safetensors header")
        (length,) = struct.unpack("<Q", head)
        if length > size - 8:
            raise damaged(path, f"truncated: header of {length} bytes in a {size}-byte file")
        header = json.loads(fh.read(length))
    ends = [v["data_offsets"][1] for k, v in header.items() if k != "__metadata__"]
    expected = 8 + length + max(ends, default=0)
    if size != expected:
        what = "truncated" if size < expected else "size differs"
        raise damaged(path, f"{what}: {size} bytes, its header describes {expected}")


def verify_file(path: str | os.PathLike) -> bool:
    """Check one file against its record (True) or, without one, its structure (False)."""
    path = Path(path)
    record_path = sidecar(path)
    if not record_path.is_file():
        check_structure(path)
        return False
    try:
        record = json.loads(record_path.read_text())
    except (OSError, ValueError) as err:
        raise damaged(path, f"its record {record_path.name} is unreadable: {err}") from None
    _compare(path, record, record.get("rule"))
    return True


def verify_dir(folder: str | os.PathLike) -> bool:
    """Check every file a folder's manifest lists (True) or, without one, the structure of its
    parquet and safetensors files (False)."""
    folder = Path(folder)
    manifest_path = folder / MANIFEST
    if not manifest_path.is_file():
        for file in _files(folder):
            if file.suffix in (".parquet", ".safetensors"):
                check_structure(file)
        return False
    try:
        manifest = json.loads(manifest_path.read_text())
        files = manifest["files"]
    except (OSError, ValueError, KeyError, TypeError) as err:
        raise damaged(manifest_path, f"unreadable manifest: {err}") from None
    for name, record in files.items():
        _compare(folder / name, record, manifest.get("rule"))
    return True


def verify_path(path: str | os.PathLike) -> bool:
    path = Path(path)
    return verify_dir(path) if path.is_dir() else verify_file(path)


def is_recorded(path: Path) -> bool:
    return (path / MANIFEST).is_file() if path.is_dir() else sidecar(path).is_file()


def verify_inputs(inputs: Iterable[str]) -> None:
    """What a job does before reading its inputs: every recorded one must match its record, and
    an unrecorded artifact of the workflow must at least be readable. Files the user supplies
    (task files, pools) are not artifacts and are read as they are; a missing input is
    Snakemake's to report. Every damaged input is named at once."""
    problems = []
    for name in dict.fromkeys(str(p) for p in inputs):
        path = Path(name)
        if not path.exists() or not (is_recorded(path) or producer(path)[0]):
            continue
        try:
            verify_path(path)
        except DamagedArtifactError as err:
            problems.append(str(err))
    if problems:
        raise DamagedArtifactError("\n".join(problems))


def read_parquet(path: str | os.PathLike, **kwargs):
    """``pandas.read_parquet`` of a verified artifact."""
    import pandas as pd

    verify_file(path)
    return pd.read_parquet(path, **kwargs)
