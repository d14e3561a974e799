"""Rule paraphrase_prompts: the candidate training prompts of one task, validated and cached."""

import json
from pathlib import Path

from promptcl.model.devices import resolve_precision
from promptcl.model.runtime import job_logging
from promptcl.prompts.backends import backend_from_config
from promptcl.prompts.candidates import hold_out, require_valid
from promptcl.prompts.paraphrase import (
    ReplyCache,
    Request,
    ValidationSpec,
    build_request,
    candidates_from_pool,
    candidates_from_replies,
    collect_replies,
    load_request_template,
)
from promptcl.prompts.pools import load_pool
from promptcl.store.integrity import verify_inputs, write_parquet
from promptcl.tasks.tables import prompt_parts


def main(snakemake) -> None:
    cfg = snakemake.params.prompts
    task = snakemake.wildcards.task
    with job_logging(snakemake.log[0], snakemake.threads) as log:
        verify_inputs(snakemake.input)
        meta = json.loads(Path(snakemake.input.meta).read_text())
        original, labels = prompt_parts(meta, snakemake.input.meta)
        spec = ValidationSpec.from_config(cfg["validation"])
        if cfg["backend"] == "file":
            pool = load_pool(Path(snakemake.input.pool), key=[task, meta["full_name"]])
            source = f"file:{Path(snakemake.input.pool).name}"
            candidates = candidates_from_pool(
                original, labels, pool[: cfg["candidates"]], source, spec
            )
        else:
            model = snakemake.params.model
            backend = backend_from_config(
                cfg,
                Path(snakemake.input.model) if "model" in snakemake.input.keys() else None,
                model["name"],
                resolve_precision(model["precision"]),
                model["trust_remote_code"],
                model["chat_template_kwargs"],
            )
            delimiters = tuple(cfg["delimiters"])
            template = load_request_template(Path(snakemake.input.template), delimiters)
            text = build_request(template, original, labels, delimiters)
            requests = [Request(task, i, text, cfg["seed"]) for i in range(cfg["candidates"])]
            cache = ReplyCache(Path(snakemake.params.cache_dir))
            workers = cfg["openai"]["max_concurrent"] if cfg["backend"] == "openai" else 1
            replies = collect_replies(backend, requests, cache, workers)
            log.info("%s: %d cached replies, %d new", task, cache.hits, cache.misses)
            candidates = candidates_from_replies(
                task, original, labels, replies, backend, spec, delimiters
            )
        candidates = hold_out(candidates, snakemake.params.heldout)
        for row in candidates.itertuples():
            state = "ok" if row.valid else f"rejected: {row.reject_reason}"
            state += ", held out for evaluation" if row.heldout else ""
            log.info("candidate %d [%s] %s", row.candidate_id, state, row.text[:120])
        require_valid(candidates, cfg["min_valid"], task)
        write_parquet(candidates, snakemake.output[0])


if __name__ == "__main__":
    main(snakemake)  # noqa: F821
