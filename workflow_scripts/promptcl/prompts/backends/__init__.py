"""Paraphrase backends: where a task's candidate instructions come from (``prompts.backend``).

One module per backend, registered in :data:`BACKENDS`:

* ``file``: a user pool per task (:mod:`.file`);
* ``openai``: any OpenAI-compatible chat-completions endpoint (:mod:`.openai_compatible`);
* ``local``: a local instruct model through transformers (:mod:`.local`).

A backend declares where its job runs, its threads and workers, its inputs and config section,
its DAG-time checks, and how it makes the candidate table (:class:`Backend`). Adding one is one
module here, its line in :data:`BACKENDS`, its section and name in config/schema.yaml
(docs/development.md, "Adding a paraphrase backend").
"""

from __future__ import annotations

from promptcl.prompts.backends.base import Backend, GeneratingBackend, ParaphraseJob
from promptcl.prompts.backends.file import FilePool
from promptcl.prompts.backends.local import Local
from promptcl.prompts.backends.openai_compatible import OpenAI

BACKENDS: dict[str, Backend] = {b.name: b for b in (FilePool(), OpenAI(), Local())}

__all__ = ["BACKENDS", "Backend", "GeneratingBackend", "ParaphraseJob", "backend_of"]


def backend_of(name: str) -> Backend:
    """The registered backend ``name``; a ValueError names the config key and the known ones."""
    if name not in BACKENDS:
        raise ValueError(f"prompts.backend: unknown backend {name!r}; known: {sorted(BACKENDS)}")
    return BACKENDS[name]
