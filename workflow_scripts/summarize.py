"""Rule summarize: one summary table over every run of the config."""

from pathlib import Path

import pandas as pd

from promptcl.runtime import job_logging


def main(snakemake) -> None:
    with job_logging(snakemake.log[0]):
        summaries = [pd.read_parquet(p) for p in snakemake.input]
        pd.concat(summaries, ignore_index=True).to_parquet(snakemake.output.table, index=False)
        texts = [Path(p).with_name("summary.txt").read_text() for p in snakemake.input]
        Path(snakemake.output.text).write_text("\n\n".join(texts))


if __name__ == "__main__":
    main(snakemake)  # noqa: F821
