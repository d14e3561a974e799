"""File pools of candidate prompts (``prompts.backend: file``): JSON, JSONL, CSV or parquet."""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path

import pandas as pd


def load_pool(path: Path, key: str | Sequence[str] | None = None) -> list[str]:
    """Texts from a user pool: JSON, JSONL, CSV or parquet (one text per candidate).

    JSON may be a list (of strings or of objects with ``text``) or ``{name: [texts]}``, in which
    case ``key`` (a name or names to try in order) selects the list. Tables use the ``text``
    column, or their only column.
    """
    if not path.is_file():
        raise FileNotFoundError(f"prompts.file.path: pool file {path} does not exist")
    suffix = path.suffix.lower()
    if suffix == ".json":
        data = json.loads(path.read_text())
        if isinstance(data, dict):
            keys = [key] if isinstance(key, str) else list(key or [])
            found = next((k for k in keys if k in data), None)
            if found is None:
                raise KeyError(f"{path}: no pool named {keys} (available: {sorted(data)[:10]}...)")
            data = data[found]
        items = data
    elif suffix == ".jsonl":
        items = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    elif suffix in (".csv", ".parquet"):
        frame = pd.read_csv(path) if suffix == ".csv" else pd.read_parquet(path)
        if "text" in frame.columns:
            items = frame["text"].tolist()
        elif len(frame.columns) == 1:
            items = frame.iloc[:, 0].tolist()
        else:
            raise ValueError(f"{path}: expected a 'text' column, found {list(frame.columns)}")
    else:
        raise ValueError(f"{path}: unsupported pool format '{suffix}' (json, jsonl, csv, parquet)")
    texts = []
    for i, item in enumerate(items):
        if isinstance(item, dict):
            item = item.get("text", item.get("instruction"))
        if not isinstance(item, str):
            raise ValueError(f"{path}: entry {i} is not a string (or an object with 'text')")
        texts.append(item)
    return texts
