"""Training-loop callbacks a strategy can ask for without knowing the Trainer: an action run in
eval mode every N optimiser steps, with the strategy's state saved into every checkpoint; and
where a callback saves its state into a checkpoint and finds it again on resume.

Torch-free at import: ``transformers`` is imported when a callback is built (strategies build
theirs inside ``plan``, in the stage job, never when the DAG imports them).
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path


def every_steps_in_eval(
    every: int,
    action: Callable[[object, int], None],
    state_file: str,
    state: Callable[[], str],
):
    """A ``TrainerCallback`` that calls ``action(model, step)`` in eval mode after every
    ``every``-th optimiser step (not after the last one, which nothing trains after), restoring
    train mode, and writes ``state()`` as ``state_file`` into each checkpoint the Trainer saves,
    so a resumed job continues from the state the uninterrupted one had at that step."""
    from transformers import TrainerCallback

    class EveryStepsInEval(TrainerCallback):
        def on_step_end(self, args, state_, control, model=None, **kwargs):
            if state_.global_step % every or state_.global_step >= state_.max_steps:
                return
            was_training = model.training
            model.eval()
            try:
                action(model, state_.global_step)
            finally:
                if was_training:
                    model.train()

        def on_save(self, args, state_, control, **kwargs):
            folder = checkpoint_dir(args, state_)
            if folder.is_dir():
                (folder / state_file).write_text(state())

    return EveryStepsInEval()


def checkpoint_dir(args, state) -> Path:
    """The checkpoint folder the Trainer has just saved (in ``on_save``), where a callback
    keeps the state it needs to resume."""
    return Path(args.output_dir) / f"checkpoint-{state.global_step}"


def resumed_file(state_dir: Path, name: str) -> Path | None:
    """``name`` in the checkpoint a job resumes from (the newest in ``state_dir``), if it is
    there: what a callback saved with :func:`checkpoint_dir`."""
    from promptcl.train.trainer import latest_checkpoint

    checkpoint = latest_checkpoint(Path(state_dir))
    path = Path(checkpoint) / name if checkpoint else None
    return path if path is not None and path.is_file() else None
