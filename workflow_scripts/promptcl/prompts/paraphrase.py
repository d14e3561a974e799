"""Candidate training prompts: paraphrases of a task's original instruction, cached and validated.

The original instruction is always candidate 0. Backends produce raw replies; everything after
that (parsing, validation, caching, ordering) is shared, so a pool from a file, a local model or
an API endpoint is audited by the same rules and lands in the same table
(:mod:`promptcl.prompts.candidates`).
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import re
import string
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import pandas as pd

from promptcl.prompts.candidates import make_table

log = logging.getLogger(__name__)

DEFAULT_DELIMITERS = ("<instruction>", "</instruction>")
REQUEST_FIELDS = {"instruction", "labels", "open", "close"}


class FatalBackendError(RuntimeError):
    """Retrying cannot help (bad credentials, unknown model): stop the job at once."""


class RequestFailed(RuntimeError):
    """One request failed for good (retries exhausted, malformed reply): its candidate is out."""


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


class Generator(Protocol):
    """What a generating backend builds: it completes one request at a time."""

    name: str
    model: str

    def options(self) -> dict[str, Any]:
        """Generation options that change replies (part of the cache key; never secrets)."""

    def complete(self, request: Request) -> str:
        """The raw reply to one request; raise RequestFailed or FatalBackendError."""


# --- requests and replies ------------------------------------------------------------------------


class TemplateError(ValueError):
    """The paraphrase request template cannot make a request a reply can be parsed from."""


def load_request_template(path: Path, delimiters: Sequence[str] | None = None) -> str:
    """The request template, checked before any request is sent: only known fields, the
    instruction among them, and (given the delimiters) a way for the reply to carry them: the
    {open} and {close} fields or the delimiters written out."""
    try:
        text = path.read_text(encoding="utf-8")
        fields = {f for _, f, _, _ in string.Formatter().parse(text) if f is not None}
    except (OSError, UnicodeDecodeError) as err:
        raise TemplateError(f"{path}: cannot read the request template: {err}") from None
    except ValueError as err:  # an unmatched brace
        raise TemplateError(f"{path}: {err}; write literal braces doubled ({{{{ }}}})") from None
    if fields - REQUEST_FIELDS or "instruction" not in fields:
        raise TemplateError(
            f"{path}: the request template may use only {sorted(REQUEST_FIELDS)} (with "
            f"{{instruction}} required) as fields; found {sorted(fields)}. Double literal braces."
        )
    if delimiters is not None:
        named = {"open", "close"} <= fields
        written = all(d in text for d in delimiters)
        if not (named or written):
            raise TemplateError(
                f"{path}: the request template neither uses {{open}} and {{close}} nor writes "
                f"the delimiters {list(delimiters)}, so no reply could be parsed"
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
    def key(backend: Generator, request: Request) -> str:
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

    def get(self, backend: Generator, request: Request) -> str | None:
        path = self.path(self.key(backend, request))
        try:
            reply = json.loads(path.read_text())["reply"] if path.is_file() else None
        except (OSError, ValueError, KeyError, TypeError) as err:  # a damaged entry: ask again
            log.warning("reply cache entry %s is unreadable (%s); requesting again", path, err)
            reply = None
        if not isinstance(reply, str):
            self.misses += 1
            return None
        self.hits += 1
        return reply

    def put(self, backend: Generator, request: Request, reply: str) -> None:
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
    backend: Generator,
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
    backend: Generator,
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
    return make_table(original, parsed, reasons[1:], backend.name, backend.model)


def candidates_from_pool(
    original: str,
    labels: Sequence[str],
    pool: Sequence[str],
    source: str,
    spec: ValidationSpec,
) -> pd.DataFrame:
    """Candidates from a user-supplied pool: validated exactly like generated ones."""
    reasons = validate(original, [original, *pool], labels, spec)
    return make_table(original, list(pool), reasons[1:], source, "")
