"""Rule plot_run: a run's accuracy-matrix heatmaps, forgetting curves and training loss."""

from pathlib import Path

import pandas as pd

from promptcl.analysis.metrics import REGISTRY
from promptcl.figures.runs import forgetting_curves, loss_curves, matrix_heatmaps
from promptcl.model.runtime import input_list, job_logging
from promptcl.store.integrity import verify_inputs


def plot_run(matrix: Path, train_logs: list[Path], run: str, outputs: dict[str, Path]) -> None:
    cells = pd.read_parquet(matrix)
    metrics = [m for m in REGISTRY if m in set(cells["metric"])]
    matrix_heatmaps(cells, metrics, f"{run}: accuracy matrix R", outputs["matrix"])
    forgetting_curves(cells, metrics[0], f"{run}: each task's {metrics[0]}", outputs["forgetting"])
    logs = {k: pd.read_parquet(p) for k, p in enumerate(train_logs, start=1)}
    loss_curves(logs, f"{run}: training loss per stage", outputs["loss"])


def main(snakemake) -> None:
    with job_logging(snakemake.log[0]) as log:
        verify_inputs(snakemake.input)
        outputs = {name: Path(snakemake.output[name]) for name in ("matrix", "forgetting", "loss")}
        plot_run(
            Path(snakemake.input.matrix),
            [Path(p) for p in input_list(snakemake.input.train_logs)],
            snakemake.wildcards.run,
            outputs,
        )
        log.info("figures: %s", ", ".join(str(p) for p in outputs.values()))


if __name__ == "__main__":
    main(snakemake)  # noqa: F821
