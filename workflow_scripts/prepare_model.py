"""Rule prepare_model: the base model as an ordinary Hugging Face folder."""

import json
from pathlib import Path

from promptcl.modeling import ModelSpec, prepare_model
from promptcl.runtime import job_logging


def main(snakemake) -> None:
    with job_logging(snakemake.log[0], snakemake.threads) as log:
        spec = ModelSpec.from_config(snakemake.params.model)
        manifest = prepare_model(spec, Path(snakemake.output.model))
        Path(snakemake.output.manifest).write_text(json.dumps(manifest, indent=2) + "\n")
        log.info("model %s (%s) ready at %s", spec.name, spec.source, snakemake.output.model)


if __name__ == "__main__":
    main(snakemake)  # noqa: F821
