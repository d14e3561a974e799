"""What every rule script does first: send all output to the rule's log, size the thread pool."""

from __future__ import annotations

import logging
import os
import sys
import traceback
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import pandas as pd


@contextmanager
def job_logging(
    log_path: str | os.PathLike, threads: int | None = None
) -> Iterator[logging.Logger]:
    """Redirect stdout/stderr (tqdm, transformers, warnings) to the job's log file.

    A failing job writes its traceback into the log as well, then re-raises so Snakemake marks the
    job failed and points the user at this file.
    """
    path = Path(log_path)
    path.parent.mkdir(parents=True, exist_ok=True)
    old_out, old_err = sys.stdout, sys.stderr
    with open(path, "w", buffering=1) as fh:
        sys.stdout = sys.stderr = fh
        root = logging.getLogger()
        handler = logging.StreamHandler(fh)
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
        root.addHandler(handler)
        root.setLevel(logging.INFO)
        if threads:
            import torch

            torch.set_num_threads(int(threads))
        logger = logging.getLogger("promptcl")
        try:
            yield logger
        except BaseException:
            traceback.print_exc(file=fh)
            raise
        finally:
            root.removeHandler(handler)
            sys.stdout, sys.stderr = old_out, old_err


def input_list(value) -> list[str]:
    """A named input as a list: Snakemake gives a single path as a plain string."""
    return [value] if isinstance(value, str) else list(value)


def load_job_state(snakemake, merge: bool = False):
    """(model on its device, tokenizer, precision) for the model state named by a job's inputs;
    ``merge`` folds the frozen LoRAs into the weights (evaluation: base-model speed)."""
    from promptcl.model.devices import default_device, resolve_precision
    from promptcl.model.modeling import load_state, load_tokenizer, use_attention

    options = snakemake.params.model
    precision = resolve_precision(options["precision"])
    trust = options["trust_remote_code"]
    model_dir = Path(snakemake.input.model)
    adapters = [Path(a) for a in input_list(snakemake.input.get("adapters", []))]
    model = load_state(model_dir, adapters, precision, trust, merge=merge).to(default_device())
    use_attention(model, options.get("attn_implementation", "auto"), training=False)
    return model, load_tokenizer(model_dir, trust), precision


def task_output(snakemake, task: str) -> Path:
    """Where an evaluation job writes a task's table: its single output file (stage 0, one task
    per job), else ``<task>.parquet`` in its output folder (after a stage, every task)."""
    out = Path(snakemake.output[0])
    if out.suffix == ".parquet":
        return out
    out.mkdir(parents=True, exist_ok=True)
    return out / f"{task}.parquet"


@contextmanager
def task_outputs(snakemake) -> Iterator[Callable[[str, pd.DataFrame], None]]:
    """``write(task, table)`` for an evaluation job's tables: its single output file (stage 0,
    one task per job), else ``<task>.parquet`` each in its output folder, which is built under
    a temporary name and renamed with its manifest when the job's last table is written (a
    job that fails half-way leaves no folder that looks complete)."""
    from promptcl.store.integrity import staged_dir, write_parquet

    out = Path(snakemake.output[0])
    if out.suffix == ".parquet":
        yield lambda task, table: write_parquet(table, out)
        return
    with staged_dir(out) as folder:
        yield lambda task, table: table.to_parquet(folder / f"{task}.parquet", index=False)
