"""Rule prepare_tasks: one normalised, capped parquet per split of a task."""

from pathlib import Path

from promptcl.dag.runs import task_sources
from promptcl.model.runtime import job_logging
from promptcl.store.integrity import write_json, write_parquet
from promptcl.tasks.files import resolve_task
from promptcl.tasks.tables import build_task_tables


def main(snakemake) -> None:
    with job_logging(snakemake.log[0]) as log:
        # relative roots are relative to the workflow folder, as in rules/common.smk
        base = Path(snakemake.scriptdir).resolve().parent
        sources = task_sources({"data": {"sources": snakemake.params.sources}}, base)
        files = resolve_task(snakemake.wildcards.task, sources)
        tables, meta = build_task_tables(files, snakemake.params.caps, snakemake.params.seed)
        for split, table in tables.items():
            write_parquet(table, snakemake.output[split])
            log.info("%s/%s: %d rows", files.full_name, split, len(table))
        write_json(snakemake.output.meta, meta)


if __name__ == "__main__":
    main(snakemake)  # noqa: F821
