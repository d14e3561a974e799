"""Rule plot_candidates: the pre-update losses SAPO chose a stage's prompt by."""

import json
from pathlib import Path

import pandas as pd

from promptcl.figures.runs import candidate_losses
from promptcl.model.runtime import job_logging
from promptcl.prompts.scores import CRITERIA
from promptcl.store import paths
from promptcl.store.integrity import verify_inputs


def main(snakemake) -> None:
    with job_logging(snakemake.log[0]) as log:
        verify_inputs(snakemake.input)
        record = json.loads((Path(snakemake.input.adapter) / paths.STAGE_RECORD).read_text())
        chosen = int(record["prompt"]["candidate_id"])
        column = CRITERIA[snakemake.params.criterion]
        title = (
            f"{snakemake.wildcards.run}, stage {snakemake.wildcards.stage} ({record['task']}): "
            f"candidate {chosen} chosen"
        )
        candidate_losses(
            pd.read_parquet(snakemake.input.scores),
            pd.read_parquet(snakemake.input.candidates),
            chosen,
            column,
            title,
            Path(snakemake.output[0]),
        )
        log.info("%s: chose candidate %d by %s", snakemake.output[0], chosen, column)


if __name__ == "__main__":
    main(snakemake)  # noqa: F821
