"""Rule plot_runs: every configuration's continual metrics, unseen mean and robustness."""

from pathlib import Path

import pandas as pd

from promptcl.figures.runs import run_comparison
from promptcl.model.runtime import job_logging
from promptcl.store.integrity import verify_inputs


def main(snakemake) -> None:
    with job_logging(snakemake.log[0]) as log:
        verify_inputs(snakemake.input)
        summary = pd.read_parquet(snakemake.input.summary)
        seeds = pd.read_parquet(snakemake.input.seeds)
        metric = snakemake.wildcards.metric
        run_comparison(summary, metric, Path(snakemake.output[0]), seeds)
        log.info("%d runs compared on %s", summary["run"].nunique(), metric)


if __name__ == "__main__":
    main(snakemake)  # noqa: F821
