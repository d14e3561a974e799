"""Rule compare_runs: configurations over their seeds, and paired comparisons with the baseline."""

import pandas as pd

from promptcl.compare import compare_instances, compare_seeds, seed_table
from promptcl.runtime import input_list, job_logging


def main(snakemake) -> None:
    params = snakemake.params
    options = params.comparison
    with job_logging(snakemake.log[0]) as log:
        summary = pd.concat(
            [pd.read_parquet(p) for p in input_list(snakemake.input.tables)], ignore_index=True
        )
        runs = list(params.layouts)
        instances = {
            run: pd.read_parquet(path)
            for run, path in zip(runs, input_list(snakemake.input.instances), strict=True)
        }
        seed_table(summary, options["level"]).to_parquet(snakemake.output.seeds, index=False)
        by_seed = compare_instances(
            instances,
            dict(params.layouts),
            options["baseline"],
            options["resamples"],
            options["level"],
            options["metrics"],
        )
        by_seed.to_parquet(snakemake.output.by_seed, index=False)
        across = compare_seeds(
            summary[summary["metric"].isin(options["metrics"])],
            options["baseline"],
            options["level"],
            by_seed,
        )
        across.to_parquet(snakemake.output.comparisons, index=False)
        log.info(
            "%d configurations over seeds; %d comparisons with %s/%s (%d per seed)",
            summary.groupby(["sequence", "method", "strategy"]).ngroups,
            len(across),
            options["baseline"]["method"],
            options["baseline"]["strategy"],
            len(by_seed),
        )


if __name__ == "__main__":
    main(snakemake)  # noqa: F821
