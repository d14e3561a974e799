"""Rule plot_baseline: each configuration minus the baseline, paired, with its verdict."""

from pathlib import Path

import pandas as pd

from promptcl.figures.runs import baseline_differences
from promptcl.model.runtime import job_logging
from promptcl.store.integrity import verify_inputs


def main(snakemake) -> None:
    with job_logging(snakemake.log[0]) as log:
        verify_inputs(snakemake.input)
        comparisons = pd.read_parquet(snakemake.input[0])
        metric = snakemake.wildcards.metric
        baseline_differences(comparisons, metric, Path(snakemake.output[0]))
        log.info("%d comparisons on %s", int((comparisons["metric"] == metric).sum()), metric)


if __name__ == "__main__":
    main(snakemake)  # noqa: F821
