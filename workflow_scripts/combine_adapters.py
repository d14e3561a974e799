"""Rule combine_adapters: the state after a stage (its stacked LoRAs) as one standard LoRA."""

import json
from pathlib import Path

from promptcl.model.runtime import input_list, job_logging
from promptcl.store.integrity import verify_inputs
from promptcl.train.combine import combine_loras


def main(snakemake) -> None:
    with job_logging(snakemake.log[0]) as log:
        verify_inputs(snakemake.input)
        adapters = [Path(p) for p in input_list(snakemake.input)]
        summary = combine_loras(adapters, Path(snakemake.output[0]))
        log.info("%d LoRAs combined into one: %s", len(adapters), json.dumps(summary))


if __name__ == "__main__":
    main(snakemake)  # noqa: F821
