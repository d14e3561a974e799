"""Rule analyze_study: the study's four analyses as tables and figures (docs/study.md)."""

from pathlib import Path

import pandas as pd

from promptcl.figures.study import (
    correlation_heatmap,
    gradient_violins,
    predictor_bars,
    spread_figure,
)
from promptcl.model.runtime import input_list, job_logging
from promptcl.store.integrity import verify_inputs, write_parquet
from promptcl.study.analysis import (
    gradient_groups,
    outcome_correlations,
    predictor_table,
    spread_table,
)


def analyze(
    outcomes: pd.DataFrame,
    measures: pd.DataFrame,
    gradients: pd.DataFrame,
    metric: str,
    resamples: int,
) -> dict[str, pd.DataFrame]:
    return {
        "spread": spread_table(outcomes, metric),
        "outcome_correlations": outcome_correlations(outcomes, metric, resamples),
        "predictors": predictor_table(measures, outcomes, metric, resamples),
        "gradient_cosines": gradient_groups(measures, gradients, resamples),
    }


FIGURES = {
    "spread": spread_figure,
    "outcome_correlations": lambda table, path: correlation_heatmap(table, "spearman", path),
    "predictors": predictor_bars,
    "gradient_cosines": gradient_violins,
}


def main(snakemake) -> None:
    params = snakemake.params
    with job_logging(snakemake.log[0]) as log:
        verify_inputs(snakemake.input)
        read = {
            name: pd.concat(
                [pd.read_parquet(p) for p in input_list(snakemake.input[name])], ignore_index=True
            )
            for name in ("outcomes", "measures", "gradients")
        }
        tables = analyze(
            read["outcomes"], read["measures"], read["gradients"], params.metric, params.bootstrap
        )
        for name, table in tables.items():
            write_parquet(table, snakemake.output[f"{name}_table"])
            FIGURES[name](table, Path(snakemake.output[f"{name}_figure"]))
        best = tables["predictors"].query("scope == 'mean' and kind == 'spearman'")
        log.info("\n%s", best[["label", "r", "ci_low", "ci_high", "n"]].round(3).to_string())


if __name__ == "__main__":
    main(snakemake)  # noqa: F821
