"""Recovery after Snakemake itself is killed."""

from __future__ import annotations

import subprocess
import sys

import pandas as pd
import pytest
import yaml

from tests.helpers import REPO
from tests.helpers.workflow import (
    RUN,
    planned_jobs,
    snakemake,
    write_config,
)


@pytest.mark.slow
def test_killed_snakemake_recovers_with_unlock_and_gives_the_same_metrics(finished, tmp_path):
    """kill -9 of the whole process group during a training stage: the rerun stops on
    Snakemake's lock until --unlock; then, with --rerun-incomplete, it recomputes only what was
    unfinished and ends with the metrics of an uninterrupted run (docs/cluster.md: Recovery)."""
    import os
    import signal
    import time

    cfg = write_config(
        tmp_path / "config.yaml", yaml.safe_load((finished / "config.yaml").read_text())
    )
    cmd = [sys.executable, "-m", "snakemake", "-s", str(REPO / "Snakefile"), "-d", str(tmp_path)]
    proc = subprocess.Popen(
        [*cmd, "--cores", "2", "--configfile", str(cfg)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    log = tmp_path / f"results/logs/{RUN}/stage_1/train.log"
    deadline = time.time() + 600
    while not log.is_file() and time.time() < deadline and proc.poll() is None:
        time.sleep(0.05)
    assert log.is_file() and proc.poll() is None, "the training stage never started"
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    assert not (tmp_path / f"results/{RUN}/metrics/summary.parquet").exists()

    # A job running beside the training stage may have left a half-written output, which
    # Snakemake reports before the lock; --rerun-incomplete (as in the profiles) gets past that.
    again = ("--configfile", str(cfg), "--rerun-incomplete")
    locked = snakemake(tmp_path, *again, check=False)
    assert locked.returncode != 0 and "--unlock" in locked.stdout + locked.stderr
    snakemake(tmp_path, "--configfile", str(cfg), "--unlock")
    rerun = snakemake(tmp_path, *again)
    assert "prepare_model" not in planned_jobs(rerun.stdout + rerun.stderr), "finished jobs stay"
    got = pd.read_parquet(tmp_path / f"results/{RUN}/metrics/accuracy_matrix.parquet")
    want = pd.read_parquet(finished / f"results/{RUN}/metrics/accuracy_matrix.parquet")
    pd.testing.assert_frame_equal(got, want)
