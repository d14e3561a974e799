"""Rule train_stage: train stage k's LoRA (method × prompt strategy) and save it.

Under Snakemake, ``main`` runs the stage in this process (one GPU or the CPU) or, when the job
has several GPUs (or ``training.processes`` asks for several processes, or DeepSpeed is used),
writes the job to ``<state>/job.json`` and starts this same file under ``torchrun --job``.
"""

import argparse
import logging
import os
import sys
from pathlib import Path

from promptcl.model.runtime import job_logging
from promptcl.store.integrity import verify_inputs
from promptcl.train.job import JOB_FILE, StageJob, claim_state_dir
from promptcl.train.launch import process_count, rank, run_forwarding_signals, torchrun_command
from promptcl.train.recipe import run_stage


def run(job: StageJob, script: Path, log: logging.Logger) -> None:
    processes = process_count(job.training.get("processes", "auto"), job.gpus)
    claim_state_dir(Path(job.state_dir), job.fingerprint(processes))
    if processes == 1 and not job.uses_deepspeed(processes):
        run_stage(job, processes)
        return
    # several processes, or DeepSpeed (which needs a launcher's rank/rendezvous environment)
    job_file = job.save(Path(job.state_dir) / JOB_FILE)
    cmd = torchrun_command(script, ["--job", str(job_file)], processes)
    log.info("launching %d training processes: %s", processes, " ".join(cmd))
    sys.stdout.flush()
    env = {**os.environ, "OMP_NUM_THREADS": str(max(1, job.threads // processes))}
    code = run_forwarding_signals(cmd, sys.stderr, env)
    if code != 0:
        raise RuntimeError(f"torchrun exited with status {code}; the ranks' output is above")
    missing = [p for p in (job.adapter_out, job.train_log_out) if not Path(p).exists()]
    if missing:
        raise RuntimeError(f"torchrun finished but rank 0 wrote no {missing}")


def main(snakemake) -> None:
    with job_logging(snakemake.log[0], snakemake.threads) as log:
        verify_inputs(snakemake.input)
        run(StageJob.from_snakemake(snakemake), Path(snakemake.scriptdir) / "train_stage.py", log)


def cli(argv: list[str] | None = None) -> None:
    """One rank of a multi-process stage (started by torchrun; output goes to the job's log)."""
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--job", type=Path, required=True, help="job.json written by the rule")
    args = parser.parse_args(argv)
    logging.basicConfig(
        stream=sys.stderr,
        level=logging.INFO,
        format=f"%(asctime)s rank{rank()} %(levelname)s %(name)s: %(message)s",
    )
    job = StageJob.load(args.job)
    run_stage(job, int(os.environ.get("WORLD_SIZE", "1")))


if __name__ == "__main__":
    if "snakemake" in globals():
        main(snakemake)  # noqa: F821
    else:
        cli()
