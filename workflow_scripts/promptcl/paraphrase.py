"""Candidate training prompts: paraphrases of a task's original instruction, cached and validated.

The original instruction is always candidate 0. Backends produce raw replies; everything after
that (parsing, validation, caching, ordering) is shared, so a pool from a file, a local model or
an API endpoint is audited by the same rules and lands in the same parquet layout.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import re
import string
from collections import Counter
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import pandas as pd

log = logging.getLogger(__name__)

CANDIDATE_COLUMNS = [
    "candidate_id",
    "text",
    "source",
    "model",
    "request_index",
    "valid",
    "reject_reason",
    "heldout",
]
DEFAULT_DELIMITERS = ("<instruction>", "</instruction>")
REQUEST_FIELDS = {"instruction", "labels", "open", "close"}


class FatalBackendError(RuntimeError):
    """Retrying cannot help (bad credentials, unknown model): stop the job at once."""


class RequestFailed(RuntimeError):
    """One request failed for good (retries exhausted, malformed reply): its candidate is out."""


class CandidateError(RuntimeError):
    """Too few valid candidates survived validation."""


@dataclass(frozen=True)
class ValidationSpec:
    """``config.yaml: prompts.validation``."""

    min_chars: int = 20
    max_chars: int = 2000
    min_length_ratio: float = 0.3
    max_length_ratio: float = 3.0

    @classmethod
    def from_config(cls, cfg: dict) -> ValidationSpec:
        return cls(**cfg)


@dataclass(frozen=True)
class Request:
    task: str
    index: int
    text: str
    seed: int


class Backend(Protocol):
    name: str
    model: str

    def options(self) -> dict[str, Any]:
        """Generation options that change replies (part of the cache key; never secrets)."""

    def complete(self, request: Request) -> str:
        """The raw reply to one request; raise RequestFailed or FatalBackendError."""


# --- requests and replies ------------------------------------------------------------------------


def load_request_template(path: Path) -> str:
    text = path.read_text()
    fields = {f for _, f, _, _ in string.Formatter().parse(text) if f is not None}
    if fields - REQUEST_FIELDS or "instruction" not in fields:
        raise ValueError(
            f"{path}: the request template may use only {sorted(REQUEST_FIELDS)} (with "
            f"{{instruction}} required) as fields; found {sorted(fields)}. Double literal braces."
        )
    return text


def labels_in(instruction: str, labels: Sequence[str]) -> list[str]:
    """The labels the original instruction mentions: those a paraphrase must keep verbatim."""
    return [label for label in labels if label and label in instruction]


def build_request(
    template: str, instruction: str, labels: Sequence[str], delimiters=DEFAULT_DELIMITERS
) -> str:
    kept = labels_in(instruction, labels)
    label_text = ", ".join(f'"{label}"' for label in kept) if kept else "none"
    return template.format(
        instruction=instruction, labels=label_text, open=delimiters[0], close=delimiters[1]
    ).strip()


def parse_reply(reply: str | None, delimiters=DEFAULT_DELIMITERS) -> str | None:
    """The text between the delimiters (first pair), stripped; None when absent."""
    if not reply:
        return None
    start = reply.find(delimiters[0])
    if start < 0:
        return None
    start += len(delimiters[0])
    end = reply.find(delimiters[1], start)
    if end < 0:
        return None
    return reply[start:end].strip()


# --- validation ---------------------------------------------------------------------------------

_PUNCT = re.compile(r"[^\w\s]")


def normalize_text(text: str) -> str:
    """Duplicate detection ignores case, punctuation and spacing."""
    return " ".join(_PUNCT.sub(" ", text.lower()).split())


def validate(
    original: str, texts: Sequence[str | None], labels: Sequence[str], spec: ValidationSpec
) -> list[str | None]:
    """A reject reason per candidate text (None = valid); ``texts[0]`` must be the original.

    A ``None`` text is a reply that could not be parsed; its reason is set by the caller.
    """
    required = labels_in(original, labels)
    seen: dict[str, int] = {}
    reasons: list[str | None] = []
    for i, text in enumerate(texts):
        if i == 0:
            reasons.append(None)
            seen[normalize_text(text or "")] = 0
            continue
        reasons.append(_reason(original, text, required, spec, seen))
        if reasons[-1] is None:
            seen[normalize_text(text)] = i
    return reasons


def _reason(original, text, required, spec, seen) -> str | None:
    if text is None:
        return "unparsable reply"
    if not text.strip():
        return "empty"
    norm = normalize_text(text)
    if norm in seen:
        return f"duplicate of candidate {seen[norm]}"
    missing = [label for label in required if label not in text]
    if missing:
        return "missing label " + ", ".join(repr(m) for m in missing)
    if "{" in text or "}" in text:
        return "stray brace"
    n, ref = len(text), max(len(original), 1)
    if n < spec.min_chars or n < spec.min_length_ratio * ref:
        return f"too short ({n} chars)"
    if n > spec.max_chars or n > spec.max_length_ratio * ref:
        return f"too long ({n} chars)"
    return None


# --- cache --------------------------------------------------------------------------------------


@dataclass
class ReplyCache:
    """One JSON file per reply, keyed by what determines it; written as soon as it arrives.

    A crash or rerun never pays for a reply twice, and a rerun reproduces the same candidates.
    """

    folder: Path
    hits: int = 0
    misses: int = 0

    @staticmethod
    def key(backend: Backend, request: Request) -> str:
        material = {
            "backend": backend.name,
            "model": backend.model,
            "options": backend.options(),
            "request": request.text,
            "index": request.index,
            "seed": request.seed,
        }
        blob = json.dumps(material, sort_keys=True).encode()
        return hashlib.sha256(blob).hexdigest()

    def path(self, key: str) -> Path:
        return self.folder / key[:2] / f"{key}.json"

    def get(self, backend: Backend, request: Request) -> str | None:
        path = self.path(self.key(backend, request))
        if not path.is_file():
            self.misses += 1
            return None
        self.hits += 1
        return json.loads(path.read_text())["reply"]

    def put(self, backend: Backend, request: Request, reply: str) -> None:
        path = self.path(self.key(backend, request))
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(f".tmp{os.getpid()}")
        record = {
            "backend": backend.name,
            "model": backend.model,
            "task": request.task,
            "index": request.index,
            "seed": request.seed,
            "reply": reply,
        }
        tmp.write_text(json.dumps(record, ensure_ascii=False))
        tmp.replace(path)


# --- generation ---------------------------------------------------------------------------------


@dataclass
class Replies:
    """Raw replies (None where the request failed) and why failed requests failed."""

    texts: list[str | None]
    errors: list[str | None] = field(default_factory=list)


def collect_replies(
    backend: Backend,
    requests: Sequence[Request],
    cache: ReplyCache,
    max_concurrent: int = 1,
    progress: Callable[[int], None] | None = None,
) -> Replies:
    """Replies for all requests: cached ones first, the rest from the backend, concurrently."""
    texts: list[str | None] = [None] * len(requests)
    errors: list[str | None] = [None] * len(requests)
    todo = []
    for i, request in enumerate(requests):
        cached = cache.get(backend, request)
        if cached is None:
            todo.append(i)
        else:
            texts[i] = cached

    def one(i: int) -> None:
        try:
            reply = backend.complete(requests[i])
        except RequestFailed as err:
            errors[i] = f"backend error: {err}"
            return
        cache.put(backend, requests[i], reply)
        texts[i] = reply
        if progress:
            progress(i)

    if max_concurrent <= 1:
        for i in todo:
            one(i)
    else:
        with ThreadPoolExecutor(max_workers=max_concurrent) as pool:
            # list() re-raises the first FatalBackendError from a worker
            list(pool.map(one, todo))
    return Replies(texts=texts, errors=errors)


def candidates_from_replies(
    task: str,
    original: str,
    labels: Sequence[str],
    replies: Replies,
    backend: Backend,
    spec: ValidationSpec,
    delimiters=DEFAULT_DELIMITERS,
) -> pd.DataFrame:
    """Candidate 0 = the original; then one row per request, in request order."""
    parsed = [parse_reply(t, delimiters) for t in replies.texts]
    reasons = validate(original, [original, *parsed], labels, spec)
    for i, (raw, err) in enumerate(zip(replies.texts, replies.errors, strict=True)):
        if err is not None:
            reasons[i + 1] = err
        elif raw is None or not raw.strip():
            reasons[i + 1] = "empty reply"
    return _table(original, parsed, reasons, backend, list(range(len(parsed))))


def candidates_from_pool(
    original: str,
    labels: Sequence[str],
    pool: Sequence[str],
    source: str,
    spec: ValidationSpec,
) -> pd.DataFrame:
    """Candidates from a user-supplied pool: validated exactly like generated ones."""
    reasons = validate(original, [original, *pool], labels, spec)

    class _Pool:
        name, model = source, ""

    return _table(original, list(pool), reasons, _Pool(), list(range(len(pool))))


def _table(original, texts, reasons, backend, indices) -> pd.DataFrame:
    rows = [(0, original, "original", "", -1, True, "", False)]
    for cid, (text, reason, index) in enumerate(zip(texts, reasons[1:], indices, strict=True), 1):
        rows.append(
            (
                cid,
                text or "",
                backend.name,
                backend.model,
                index,
                reason is None,
                reason or "",
                False,
            )
        )
    return pd.DataFrame(rows, columns=CANDIDATE_COLUMNS)


def hold_out(table: pd.DataFrame, n: int) -> pd.DataFrame:
    """Reserve the last ``n`` valid paraphrases for evaluation: no strategy may train on them."""
    table = table.copy()
    table["heldout"] = False
    if n:
        ids = table.loc[table["valid"] & (table["candidate_id"] > 0), "candidate_id"].tail(n)
        table.loc[table["candidate_id"].isin(ids), "heldout"] = True
    return table


def training_pool(table: pd.DataFrame) -> pd.DataFrame:
    """The candidates strategies may train with (held-out ones removed)."""
    if "heldout" not in table.columns:
        return table
    return table[~table["heldout"].astype(bool)].reset_index(drop=True)


def heldout_prompts(table: pd.DataFrame) -> list[tuple[str, int, str]]:
    """(prompt_id, candidate_id, text) of the held-out paraphrases, numbered heldout_1..n."""
    if "heldout" not in table.columns:
        return []
    rows = table[table["heldout"].astype(bool)]
    return [
        (f"heldout_{i}", int(cid), text)
        for i, (cid, text) in enumerate(zip(rows["candidate_id"], rows["text"], strict=True), 1)
    ]


def require_valid(table: pd.DataFrame, min_valid: int, task: str) -> None:
    """Fail, naming the task and the reject reasons, when too few paraphrases survive."""
    trainable = training_pool(table)
    valid = int(trainable["valid"].sum()) - 1  # the original does not count
    if valid >= min_valid:
        return
    reasons = Counter(table.loc[~table["valid"], "reject_reason"])
    summary = "; ".join(f"{reason} ×{n}" for reason, n in reasons.most_common())
    raise CandidateError(
        f"task {task}: only {valid} valid paraphrase(s) of {len(table) - 1}, fewer than "
        f"prompts.min_valid={min_valid}. Rejected: {summary or 'none'}"
    )


# --- file pools ---------------------------------------------------------------------------------


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
