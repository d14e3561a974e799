"""Rule compare_runs: configurations over their seeds, and paired comparisons with the baseline."""

import pandas as pd

from promptcl.analysis.compare import compare_instances, compare_seeds, seed_table
from promptcl.model.runtime import input_list, job_logging
from promptcl.store.integrity import verify_inputs, write_parquet


def main(snakemake) -> None:
    params = snakemake.params
    options = params.comparison
    with job_logging(snakemake.log[0]) as log:
        verify_inputs(snakemake.input)
        summary = pd.concat(
            [pd.read_parquet(p) for p in input_list(snakemake.input.tables)], ignore_index=True
        )
        runs = list(params.layouts)
        instances = {
            run: pd.read_parquet(path)
            for run, path in zip(runs, input_list(snakemake.input.instances), strict=True)
        }
        write_parquet(seed_table(summary, options["level"]), snakemake.output.seeds)
        by_seed = compare_instances(
            instances,
            dict(params.layouts),
            options["baseline"],
            options["resamples"],
            options["level"],
            options["metrics"],
        )
        write_parquet(by_seed, snakemake.output.by_seed)
        across = compare_seeds(
            summary[summary["metric"].isin(options["metrics"])],
            options["baseline"],
            options["level"],
            by_seed,
        )
        write_parquet(across, snakemake.output.comparisons)
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
