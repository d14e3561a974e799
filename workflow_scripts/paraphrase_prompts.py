"""Rule paraphrase_prompts: the candidate training prompts of one task, validated and cached."""

import json
from pathlib import Path

from promptcl.model.runtime import job_logging
from promptcl.prompts.backends import ParaphraseJob, backend_of
from promptcl.prompts.candidates import hold_out, require_valid
from promptcl.prompts.paraphrase import ValidationSpec
from promptcl.store.integrity import verify_inputs, write_parquet
from promptcl.tasks.tables import prompt_parts


def main(snakemake) -> None:
    cfg = snakemake.params.prompts
    with job_logging(snakemake.log[0], snakemake.threads) as log:
        verify_inputs(snakemake.input)
        meta = json.loads(Path(snakemake.input.meta).read_text())
        original, labels = prompt_parts(meta, snakemake.input.meta)
        job = ParaphraseJob(
            task=snakemake.wildcards.task,
            full_name=meta["full_name"],
            original=original,
            labels=labels,
            spec=ValidationSpec.from_config(cfg["validation"]),
            inputs=dict(snakemake.input.items()),
            options=cfg,
            model=snakemake.params.model,
            cache_dir=Path(snakemake.params.cache_dir),
        )
        candidates = hold_out(backend_of(cfg["backend"]).candidates(job), snakemake.params.heldout)
        for row in candidates.itertuples():
            state = "ok" if row.valid else f"rejected: {row.reject_reason}"
            state += ", held out for evaluation" if row.heldout else ""
            log.info("candidate %d [%s] %s", row.candidate_id, state, row.text[:120])
        require_valid(candidates, cfg["min_valid"], job.task)
        write_parquet(candidates, snakemake.output[0])


if __name__ == "__main__":
    main(snakemake)  # noqa: F821
