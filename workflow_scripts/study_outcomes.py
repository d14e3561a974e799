"""Rule study_outcomes: per T2 candidate, the scores after T2 and their change against the
original prompt (from each cell run's accuracy matrix)."""

import pandas as pd

from promptcl.dag.study_design import trained_candidates
from promptcl.model.runtime import input_list, job_logging
from promptcl.store.integrity import verify_inputs, write_parquet
from promptcl.study.analysis import outcome_table


def main(snakemake) -> None:
    params = snakemake.params.branch
    with job_logging(snakemake.log[0]) as log:
        verify_inputs(snakemake.input)
        table = pd.read_parquet(snakemake.input.candidates)
        ids = trained_candidates(table, params["max_candidates"])
        paths = input_list(snakemake.input.matrices)
        if len(ids) != len(paths):
            raise ValueError(f"{len(ids)} trained candidates but {len(paths)} accuracy matrices")
        matrices = {cid: pd.read_parquet(p) for cid, p in zip(ids, paths, strict=True)}
        table = outcome_table(
            snakemake.wildcards.branch, matrices, params["t1"], params["t2"], params["unseen"]
        )
        write_parquet(table, snakemake.output[0])
        log.info("%d outcome rows for %d candidates", len(table), len(ids))


if __name__ == "__main__":
    main(snakemake)  # noqa: F821
