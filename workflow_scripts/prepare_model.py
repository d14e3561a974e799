"""Rule prepare_model: the base model as an ordinary Hugging Face folder."""

from pathlib import Path

from promptcl.model.modeling import ModelSpec, prepare_model
from promptcl.model.runtime import job_logging
from promptcl.store.integrity import write_json


def main(snakemake) -> None:
    with job_logging(snakemake.log[0], snakemake.threads) as log:
        spec = ModelSpec.from_config(snakemake.params.model)
        manifest = prepare_model(spec, Path(snakemake.output.model))
        write_json(snakemake.output.manifest, manifest)
        log.info("model %s (%s) ready at %s", spec.name, spec.source, snakemake.output.model)


if __name__ == "__main__":
    main(snakemake)  # noqa: F821
