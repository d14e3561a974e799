"""Rule summarize: one summary table over every run of the config, and a comparison."""

from pathlib import Path

import pandas as pd

from promptcl.analysis.summary_text import format_comparisons, format_seeds
from promptcl.model.runtime import input_list, job_logging
from promptcl.store.integrity import verify_inputs, write_parquet, write_text

COLUMNS = [
    "run",
    "protocol",
    "sequence",
    "method",
    "strategy",
    "seed",
    "metric",
    "AP",
    "AP_se",
    "BWT",
    "BWT_se",
    "FWT",
    "FWT_se",
    "F",
    "F_se",
    "plasticity",
    "ACC",
    "unseen_mean",
    "unseen_mean_se",
    "robust_mean",
    "robust_std",
    "train_seconds",
    "scoring_seconds",
]


def main(snakemake) -> None:
    with job_logging(snakemake.log[0]) as log:
        verify_inputs(snakemake.input)
        summaries = [pd.read_parquet(p) for p in input_list(snakemake.input.tables)]
        table = pd.concat(summaries, ignore_index=True)
        write_parquet(table, snakemake.output.table)
        texts = [Path(p).read_text() for p in input_list(snakemake.input.texts)]
        metrics = snakemake.params.metrics
        if len(summaries) > 1:
            overview = table[[c for c in COLUMNS if c in table.columns]]
            for metric in metrics:
                part = overview[overview["metric"] == metric]
                texts.append(f"All runs ({metric}):\n{part.round(3).to_string(index=False)}\n")
        seeds = pd.read_parquet(snakemake.input.seeds)
        comparisons = pd.read_parquet(snakemake.input.comparisons)
        for metric in metrics:
            texts += [format_seeds(seeds, metric), format_comparisons(comparisons, metric)]
        texts = [t for t in texts if t]
        write_text(snakemake.output.text, "\n\n".join(texts))
        log.info("%d runs summarised", len(summaries))


if __name__ == "__main__":
    main(snakemake)  # noqa: F821
