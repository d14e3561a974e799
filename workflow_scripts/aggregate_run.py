"""Rule aggregate_run: accuracy matrix and continual-learning summary of one run."""

from pathlib import Path

import pandas as pd

from promptcl.aggregate import cell_table, format_matrix, format_summary, run_summary
from promptcl.runtime import job_logging


def as_list(value) -> list[str]:
    return [value] if isinstance(value, str) else list(value)


def main(snakemake) -> None:
    layout = snakemake.params.layout
    run = snakemake.wildcards.run
    with job_logging(snakemake.log[0]) as log:
        tasks = layout["sequence"] + layout["unseen"]
        tables = {}
        for task, path in zip(tasks, as_list(snakemake.input.zero_shot), strict=True):
            tables[(0, task)] = pd.read_parquet(path)
        for k, folder in enumerate(as_list(snakemake.input.stages), start=1):
            for task in tasks:
                tables[(k, task)] = pd.read_parquet(Path(folder) / f"{task}.parquet")
        cells = cell_table(tables, layout["sequence"], layout["unseen"])
        summary = run_summary(cells, layout["sequence"], layout["unseen"])
        cells.insert(0, "run", run)
        summary.insert(0, "run", run)
        cells.to_parquet(snakemake.output.matrix, index=False)
        summary.to_parquet(snakemake.output.summary, index=False)
        text = [format_summary(summary, run), ""]
        for metric in ("rougeL", "label_accuracy", "exact_match"):
            text.append(format_matrix(cells, metric))
        Path(snakemake.output.text).write_text("\n".join(text))
        log.info("\n%s", "\n".join(text))


if __name__ == "__main__":
    main(snakemake)  # noqa: F821
