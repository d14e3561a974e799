"""``python -m promptcl verify [results]``: check every artifact of a results folder against its
record, and say what is damaged and what to rerun (:mod:`promptcl.store.integrity`).

Checked: every file with a ``.sha256.json`` record and every folder with a manifest (size and
sha256 of each file); the base model's files against ``model/manifest.json`` (size and content
fingerprint); artifacts without a record (written before records existed) for structure only (a
parquet footer, a safetensors header, JSON that parses). Logs, benchmarks, the reply cache and
training checkpoints are not artifacts and are skipped; temporary files a killed job left are
listed (safe to delete).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

from promptcl.store import integrity, paths
from promptcl.store.hashing import file_fingerprint


@dataclass
class Verification:
    checked: int = 0
    unrecorded: int = 0
    damaged: list[tuple[str, str]] = field(default_factory=list)  # (target, message)
    leftovers: list[Path] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.damaged


def _check(result: Verification, path: Path, verify) -> None:
    try:
        recorded = verify(path)
    except integrity.DamagedArtifactError as err:
        result.damaged.append((integrity.producer(path)[1], str(err)))
        return
    result.checked += 1
    result.unrecorded += not recorded


def _skipped(rel: tuple[str, ...]) -> bool:
    """Logs, benchmarks, the reply cache and training checkpoints: not artifacts."""
    return (
        rel[0] in ("logs", "benchmarks")
        or rel[:2] == ("prompts", "cache")
        or (len(rel) > 2 and rel[1].startswith("stage_") and rel[2] == "state")
    )


def _model(result: Verification, results: Path) -> None:
    """The base model's files against the fingerprints prepare_model recorded."""
    manifest = results / Path(paths.MODEL_MANIFEST).relative_to(paths.RESULTS)
    folder = results / Path(paths.MODEL_DIR).relative_to(paths.RESULTS)
    try:
        files = json.loads(manifest.read_text())["files"]
    except (OSError, ValueError, KeyError, TypeError):
        return  # no model yet, or a damaged manifest (reported as a file)
    for name, expected in files.items():
        path = folder / name
        if not path.is_file():
            problem = "missing, though model/manifest.json lists it"
        elif file_fingerprint(path) != expected:
            problem = f"content fingerprint {file_fingerprint(path)}, recorded {expected}"
        else:
            result.checked += 1
            continue
        err = integrity.damaged(path, problem, "prepare_model")
        result.damaged.append((integrity.producer(path)[1], str(err)))


def verify_results(results: Path) -> Verification:
    """Every artifact under ``results`` checked (the model folder by its fingerprints)."""
    if not results.is_dir():
        raise FileNotFoundError(f"{results}: no such results folder")
    result = Verification()
    model_dir = results / Path(paths.MODEL_DIR).relative_to(paths.RESULTS)
    found = []
    for path in sorted(results.rglob("*")):
        rel = path.relative_to(results).parts
        hidden = [part for part in rel if part.startswith(".")]
        if _skipped(rel) or path == model_dir or model_dir in path.parents:
            continue
        if hidden:  # a temporary name: an interrupted write (inner files belong to it)
            if len(hidden) == 1 and rel[-1] == hidden[0] and integrity.TEMP_MARK in rel[-1]:
                result.leftovers.append(path)
            continue
        found.append(path)
    folders = [
        p
        for p in found
        if p.is_dir()
        and any((p / n).is_file() for n in (integrity.MANIFEST, "adapter_config.json"))
    ]
    for folder in folders:
        _check(result, folder, integrity.verify_dir)
    for path in found:
        if not path.is_file() or any(f in path.parents for f in folders):
            continue
        if path.name.endswith(integrity.SIDECAR):
            artifact = path.with_name(path.name[: -len(integrity.SIDECAR)])
            if not artifact.exists():
                err = integrity.damaged(artifact, "missing, though its record exists")
                result.damaged.append((integrity.producer(artifact)[1], str(err)))
        elif path.suffix in (".parquet", ".json", ".txt", ".safetensors"):
            _check(result, path, integrity.verify_file)
    _model(result, results)
    return result


def report(results: Path) -> tuple[str, int]:
    """The text ``verify`` prints, and its exit status (0 whole, 1 damaged)."""
    result = verify_results(results)
    head = f"{results}: {result.checked} artifacts checked, {len(result.damaged)} damaged"
    if result.unrecorded:
        head += f" ({result.unrecorded} without a record: checked for structure only)"
    lines = [head] + [f"DAMAGED {message}" for _, message in result.damaged]
    if result.damaged:
        lines.append(
            "\nTo redo every damaged artifact and what was computed from it, run in "
            f"{results.resolve().parent} (adding the --configfile/--profile of the run):\n  "
            + integrity.redo_command(t for t, _ in result.damaged)
        )
    if result.leftovers:
        lines.append(
            f"\n{len(result.leftovers)} temporary file(s) of interrupted writes (never read; "
            "safe to delete once no job runs):"
        )
        lines += [f"  {p}" for p in result.leftovers]
    return "\n".join(lines) + "\n", 0 if result.ok else 1
