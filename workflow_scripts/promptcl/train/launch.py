"""How a training job runs on the hardware it was given, and how it survives being stopped.

One process per GPU the job can see (``torchrun``, optionally with DeepSpeed), one process on a
single GPU or on the CPU. A SLURM time-limit warning, a preemption or an ``scancel`` arrives as
SIGTERM (or SIGUSR1 with ``--signal=USR1@…``): :class:`PreemptionGuard` turns it into "save a
checkpoint at the end of this optimiser step, then stop", agreed on by every rank so no rank is
left waiting in a collective. The job then fails with :class:`TrainingInterrupted`; Snakemake's
retry (or the user's rerun) resumes from that checkpoint.
"""

from __future__ import annotations

import logging
import os
import signal
import subprocess
import sys
import threading
from collections.abc import Sequence
from pathlib import Path

import torch

log = logging.getLogger(__name__)

STOP_SIGNALS = (signal.SIGTERM, signal.SIGUSR1)


class TrainingInterrupted(RuntimeError):
    """Training stopped on a signal after saving a resumable checkpoint."""


def rank() -> int:
    return int(os.environ.get("RANK", "0"))


def world_size() -> int:
    return int(os.environ.get("WORLD_SIZE", "1"))


def is_main_process() -> bool:
    """Only rank 0 writes the stage's artifacts (adapter, log table, job record)."""
    return rank() == 0


def visible_gpus() -> int:
    """GPUs this job may use: SLURM's ``--gpus`` shows up as CUDA_VISIBLE_DEVICES."""
    return torch.cuda.device_count() if torch.cuda.is_available() else 0


def process_count(processes: int | str, gpu_resource: int | None = None) -> int:
    """Training processes for a job.

    ``auto``: one per visible GPU, capped by the job's ``gpu`` resource (a workstation job that
    asked for one GPU must not spread over all of them); one on a single GPU or the CPU.
    An integer forces that many (on the CPU: DDP over gloo, which is how the multi-process path
    is tested without GPUs).
    """
    if processes != "auto":
        count = int(processes)
        if count < 1:
            raise ValueError(f"training.processes must be 'auto' or >= 1, got {processes!r}")
        return count
    count = visible_gpus()
    if gpu_resource:
        count = min(count, int(gpu_resource))
    return max(1, count)


def torchrun_command(
    script: Path, args: Sequence[str], nproc: int, python: str = sys.executable
) -> list[str]:
    """``torchrun --standalone``: a free rendezvous port per job, so jobs sharing a node never
    collide. ``python -m torch.distributed.run`` is torchrun without relying on PATH."""
    return [
        python,
        "-m",
        "torch.distributed.run",
        "--standalone",
        f"--nproc-per-node={nproc}",
        str(script),
        *args,
    ]


def run_forwarding_signals(cmd: Sequence[str], stream, env: dict | None = None) -> int:
    """Run ``cmd`` with its output in ``stream``; pass SIGTERM/SIGUSR1 on to it.

    Under SLURM every process of the job is signalled anyway; a local Snakemake or a
    ``--signal=B:…`` only signals this process, which must then tell the trainers.
    """
    proc = subprocess.Popen(cmd, stdout=stream, stderr=stream, env=env)
    previous = {}

    def forward(signum, frame):
        log.warning("received %s: passing it on to training", signal.strsignal(signum))
        proc.send_signal(signum)

    if threading.current_thread() is threading.main_thread():
        previous = {s: signal.signal(s, forward) for s in STOP_SIGNALS}
    try:
        return proc.wait()
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)


def _any_rank(flag: bool) -> bool:
    """True on every rank if it is true on one (a stop must happen at the same step everywhere)."""
    import torch.distributed as dist

    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return flag
    device = (
        torch.device("cuda", torch.cuda.current_device())
        if dist.get_backend() == "nccl"
        else torch.device("cpu")
    )
    value = torch.tensor([1 if flag else 0], device=device)
    dist.all_reduce(value, op=dist.ReduceOp.MAX)
    return bool(value.item())


def preemption_guard():
    """A TrainerCallback: on SIGTERM/SIGUSR1, checkpoint at the end of the current step and stop.

    :meth:`install` it as early as the job starts: a signal that arrives while the model is
    still loading then stops training after its first step, with a checkpoint, instead of
    killing the process with nothing saved.
    """
    from transformers import TrainerCallback

    class PreemptionGuard(TrainerCallback):
        def __init__(self):
            self.received: int | None = None
            self.stopped_at: int | None = None
            self._previous: dict = {}

        def _handle(self, signum, frame):
            if self.received is None:
                log.warning(
                    "received %s: saving a checkpoint after this step, then stopping",
                    signal.strsignal(signum),
                )
            self.received = signum

        def install(self) -> None:
            if not self._previous and threading.current_thread() is threading.main_thread():
                self._previous = {s: signal.signal(s, self._handle) for s in STOP_SIGNALS}

        def uninstall(self) -> None:
            for signum, handler in self._previous.items():
                signal.signal(signum, handler)
            self._previous = {}

        def on_train_begin(self, args, state, control, **kwargs):
            self.install()

        def on_step_end(self, args, state, control, **kwargs):
            if _any_rank(self.received is not None):
                control.should_save = True
                control.should_training_stop = True
                self.stopped_at = state.global_step

    return PreemptionGuard()
