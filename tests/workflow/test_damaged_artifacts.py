"""The second trial of issue 25 on a finished tiny run: artifacts damaged after their jobs
finished (a truncated stage adapter and a truncated task table, as a quota or a partial copy
leaves them, their times kept) are invisible to Snakemake, but ``python -m promptcl verify``
names each file, the rule that writes it and the rerun, and a job reading them fails naming
them (docs/cluster.md: Checking a results folder)."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tests.helpers import REPO
from tests.helpers.workflow import RUN, SEQUENCE, planned_jobs, snakemake


def truncate_keeping_times(path: Path) -> None:
    """Half the file, its modification time unchanged (Snakemake compares times, not content)."""
    stat = path.stat()
    with open(path, "r+b") as fh:
        fh.truncate(stat.st_size // 2)
    os.utime(path, ns=(stat.st_atime_ns, stat.st_mtime_ns))


@pytest.mark.slow
def test_verify_and_a_consumer_name_a_truncated_adapter_and_table(finished, tmp_path):
    work = tmp_path / "copy"
    shutil.copytree(finished, work, symlinks=True)  # the shared run stays whole
    results = work / "results"
    cfg = ("--configfile", str(work / "config.yaml"))
    before = subprocess.run(
        [sys.executable, "-m", "promptcl", "verify", str(results)],
        capture_output=True,
        text=True,
        cwd=REPO / "workflow_scripts",
    )
    assert before.returncode == 0 and ", 0 damaged" in before.stdout, before.stdout

    adapter = results / RUN / "stage_1/adapter/adapter_model.safetensors"
    [table] = (results / "tasks").glob(f"{SEQUENCE[0]}*/test.parquet")
    truncate_keeping_times(adapter)
    truncate_keeping_times(table)

    # Snakemake sees nothing: a file inside a directory() output, and times unchanged
    dry = snakemake(work, "-n", *cfg)
    assert "Nothing to be done" in dry.stdout + dry.stderr, dry.stdout[-2000:]

    proc = subprocess.run(
        [sys.executable, "-m", "promptcl", "verify", str(results)],
        capture_output=True,
        text=True,
        cwd=REPO / "workflow_scripts",
    )
    out = proc.stdout
    assert proc.returncode == 1, out + proc.stderr
    assert ", 2 damaged" in out.splitlines()[0], out
    damaged = [line for line in out.splitlines() if line.startswith("DAMAGED ")]
    assert len(damaged) == 2, out
    for path, rule in [(adapter, "train_stage"), (table, "prepare_tasks")]:
        [line] = [x for x in damaged if x.startswith(f"DAMAGED {path} is damaged (truncated")]
        assert f"written by rule {rule}" in line, line
        assert "redo with: snakemake --cores all --forcerun " in line, line
    adapter_target = f"results/{RUN}/stage_1/adapter"
    table_target = str(table.relative_to(work))
    command = next(x.strip() for x in out.splitlines() if x.strip().startswith("snakemake "))
    targets = " ".join(sorted([adapter_target, table_target]))
    assert command == f"snakemake --cores all --forcerun {targets}", out
    assert f"run in {work} " in out

    # the printed command is one Snakemake accepts: it redoes both producers and their consumers
    redo = snakemake(work, "-n", *command.split()[3:], *cfg)
    jobs = planned_jobs(redo.stdout + redo.stderr)
    assert jobs.get("train_stage", 0) >= 1 and jobs.get("prepare_tasks", 0) >= 1, jobs
    assert jobs.get("predict_stage", 0) >= 1 and jobs.get("aggregate_run", 0) >= 1, jobs

    # a consumer forced to run (here the stage-1 predictions) fails naming both files and rules
    predictions = f"results/{RUN}/stage_1/predictions"
    failed = snakemake(work, predictions, "--force", *cfg, check=False)
    assert failed.returncode != 0
    log = (results / f"logs/{RUN}/stage_1/predictions.log").read_text()
    assert "DamagedArtifactError" in log, log[-3000:]
    for path, rule in [(adapter, "train_stage"), (table, "prepare_tasks")]:
        named = f"{path.relative_to(work)} is damaged (truncated"  # as Snakemake passes it
        assert named in log and f"written by rule {rule}" in log, log[-3000:]
    assert f"--forcerun {adapter_target}" in log and f"--forcerun {table_target}" in log
    assert "SafetensorError" not in log and "ArrowInvalid" not in log
    assert not (results / predictions).exists(), "a failed job leaves no output folder"
