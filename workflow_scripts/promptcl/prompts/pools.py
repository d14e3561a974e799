"""File pools of candidate prompts (``prompts.backend: file``): JSON, JSONL, CSV or parquet.

Every way a pool can be malformed raises :class:`PoolFormatError` naming the file and the entry
(or line), never a bare JSON, pandas or key error: the plan reads each pool while Snakemake
builds the DAG, so a broken one stops the workflow before any job runs.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

SUFFIXES = (".json", ".jsonl", ".csv", ".parquet")


class PoolFormatError(ValueError):
    """A pool file exists but cannot be read as a list of texts; the message names the file."""


def _json(path: Path, text: str, where: str = "") -> Any:
    try:
        return json.loads(text)
    except json.JSONDecodeError as err:
        raise PoolFormatError(f"{path}{where}: invalid JSON: {err}") from None
    except RecursionError:
        raise PoolFormatError(f"{path}{where}: invalid JSON: nested too deeply") from None


def _table_items(path: Path) -> list:
    import pandas as pd

    try:
        frame = pd.read_csv(path) if path.suffix.lower() == ".csv" else pd.read_parquet(path)
    except Exception as err:  # pandas and pyarrow raise many types for one meaning
        raise PoolFormatError(f"{path}: cannot be read as a table: {err}") from None
    if "text" in frame.columns:
        return frame["text"].tolist()
    if len(frame.columns) == 1:
        return frame.iloc[:, 0].tolist()
    raise PoolFormatError(f"{path}: expected a 'text' column, found {list(frame.columns)}")


def _items(path: Path, key: str | Sequence[str] | None) -> list:
    suffix = path.suffix.lower()
    if suffix in (".csv", ".parquet"):
        return _table_items(path)
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as err:
        raise PoolFormatError(f"{path}: cannot read file: {err}") from None
    if suffix == ".jsonl":
        lines = enumerate(text.splitlines(), 1)
        return [_json(path, line, f": line {n}") for n, line in lines if line.strip()]
    data = _json(path, text)
    if isinstance(data, dict):
        keys = [key] if isinstance(key, str) else list(key or [])
        found = next((k for k in keys if k in data), None)
        if found is None:
            raise PoolFormatError(
                f"{path}: no pool named {keys} (available: {sorted(data)[:10]}...)"
            )
        data = data[found]
        if not isinstance(data, list):
            raise PoolFormatError(
                f"{path}: pool {found!r} must be a list of texts, got {type(data).__name__}"
            )
    if not isinstance(data, list):
        raise PoolFormatError(
            f"{path}: expected a list of texts or {{name: [texts]}}, got {type(data).__name__}"
        )
    return data


def load_pool(path: Path, key: str | Sequence[str] | None = None) -> list[str]:
    """Texts from a user pool: JSON, JSONL, CSV or parquet (one text per candidate).

    JSON may be a list (of strings or of objects with ``text``) or ``{name: [texts]}``, in which
    case ``key`` (a name or names to try in order) selects the list. Tables use the ``text``
    column, or their only column.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"prompts.file.path: pool file {path} does not exist")
    if path.suffix.lower() not in SUFFIXES:
        raise PoolFormatError(
            f"{path}: unsupported pool format '{path.suffix}' (json, jsonl, csv, parquet)"
        )
    texts = []
    for i, item in enumerate(_items(path, key)):
        if isinstance(item, dict):
            item = item.get("text", item.get("instruction"))
        if not isinstance(item, str):
            raise PoolFormatError(
                f"{path}: entry {i} is not a string (or an object with 'text'), got "
                f"{type(item).__name__}"
            )
        try:
            item.encode("utf-8")
        except UnicodeEncodeError:
            raise PoolFormatError(
                f"{path}: entry {i} is not valid Unicode text (a lone surrogate escape)"
            ) from None
        texts.append(item)
    return texts
