"""Launch decisions and signal-safe training: a SIGTERM mid-stage leaves a checkpoint to resume."""

from __future__ import annotations

import os
import signal
import sys

import pytest
import torch
from safetensors.torch import load_file
from transformers import TrainerCallback

from promptcl.methods import build_stage_model
from promptcl.model.adapters import save_adapter
from promptcl.train import launch
from promptcl.train.data import encode_table
from promptcl.train.launch import TrainingInterrupted, process_count, torchrun_command
from promptcl.train.trainer import fit
from tests.helpers.stages import FMT, LORA, spec, table, train


def test_process_count_follows_visible_gpus_capped_by_the_gpu_resource(monkeypatch):
    monkeypatch.setattr(launch, "visible_gpus", lambda: 4)
    assert process_count("auto") == 4
    assert process_count("auto", gpu_resource=2) == 2, "a job that asked for 2 GPUs uses 2"
    monkeypatch.setattr(launch, "visible_gpus", lambda: 0)
    assert process_count("auto", gpu_resource=1) == 1, "the CPU is one process"
    assert process_count(3) == 3
    with pytest.raises(ValueError, match="training.processes"):
        process_count(0)


def test_torchrun_command_is_standalone_with_one_process_per_device():
    cmd = torchrun_command("train_stage.py", ["--job", "j.json"], 4, python="py")
    assert cmd[:3] == ["py", "-m", "torch.distributed.run"]
    assert "--standalone" in cmd and "--nproc-per-node=4" in cmd
    assert cmd[-3:] == ["train_stage.py", "--job", "j.json"]


class SignalAt(TrainerCallback):
    """Sends this process a signal in the middle of the given optimiser step."""

    def __init__(self, step: int, signum: int = signal.SIGTERM):
        self.step, self.signum = step, signum

    def on_step_begin(self, args, state, control, **kw):
        if state.global_step + 1 == self.step:
            os.kill(os.getpid(), self.signum)


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGUSR1])
def test_signal_saves_a_checkpoint_and_the_rerun_ends_with_the_same_adapter(
    tiny_model_dir, tiny_tokenizer, tmp_path, signum
):
    full = train(tiny_model_dir, tiny_tokenizer, [], 1, tmp_path / "full", "yes", max_steps=4)
    state = tmp_path / "state"
    examples = encode_table(tiny_tokenizer, FMT, table(8, "yes"))
    settings = spec(max_steps=4, save_steps=10)  # no periodic checkpoint before the end
    model = build_stage_model(tiny_model_dir, [], LORA, 1)
    handler = signal.getsignal(signum)
    with pytest.raises(TrainingInterrupted, match="step 1 of 4"):
        fit(model, tiny_tokenizer, examples, settings, state, [SignalAt(1, signum)])
    assert signal.getsignal(signum) is handler, "the previous handler is restored"
    assert sorted(p.name for p in state.glob("checkpoint-*")) == ["checkpoint-1"]
    model = build_stage_model(tiny_model_dir, [], LORA, 1)
    result = fit(model, tiny_tokenizer, examples, settings, state)
    assert result.info["resumed_at_step"] == 1 and result.info["steps"] == 4
    [interruption] = result.info["interruptions"]
    assert interruption["step"] == 1 and interruption["signal"] == signal.Signals(signum).name
    # the log table is continuous across the interruption: step 1 comes from the checkpoint
    assert list(result.log["step"]) == [1, 2, 3, 4]
    save_adapter(model, "stage_1", tmp_path / "resumed", str(tiny_model_dir))
    want = load_file(str(full / "adapter_model.safetensors"))
    got = load_file(str(tmp_path / "resumed" / "adapter_model.safetensors"))
    for key in want:
        assert torch.allclose(want[key], got[key], atol=1e-6), key


def test_forwarding_runner_passes_sigterm_to_the_child(tmp_path):
    """A locally signalled rule process tells its torchrun child (SLURM would signal both)."""
    marker = tmp_path / "got"
    child = (
        "import signal, sys, time, pathlib\n"
        f"signal.signal(signal.SIGTERM, lambda *a: (pathlib.Path({str(marker)!r}).write_text('x'),"
        " sys.exit(3)))\n"
        "print('ready', flush=True)\n"
        "time.sleep(30)\n"
    )
    out = (tmp_path / "out.txt").open("w")
    import threading
    import time

    def fire():
        deadline = time.time() + 20
        while time.time() < deadline:
            if (tmp_path / "out.txt").read_text().startswith("ready"):
                os.kill(os.getpid(), signal.SIGTERM)
                return
            time.sleep(0.05)

    threading.Thread(target=fire, daemon=True).start()
    code = launch.run_forwarding_signals([sys.executable, "-c", child], out)
    assert code == 3 and marker.read_text() == "x"


def test_signal_during_setup_stops_after_the_first_step_with_a_checkpoint(
    tiny_model_dir, tiny_tokenizer, tmp_path
):
    """A time-limit warning can come while the model still loads: the job keeps what it can."""
    guard = launch.preemption_guard()
    guard.install()
    try:
        os.kill(os.getpid(), signal.SIGTERM)  # "during setup": before the Trainer exists
        model = build_stage_model(tiny_model_dir, [], LORA, 1)
        examples = encode_table(tiny_tokenizer, FMT, table(8, "yes"))
        settings = spec(max_steps=4, save_steps=10)
        with pytest.raises(TrainingInterrupted, match="step 1 of 4"):
            fit(model, tiny_tokenizer, examples, settings, tmp_path / "state", guard=guard)
        assert signal.getsignal(signal.SIGTERM) == guard._handle, "the caller removes it"
    finally:
        guard.uninstall()
    assert signal.getsignal(signal.SIGTERM) == signal.SIG_DFL
    assert (tmp_path / "state" / "checkpoint-1").is_dir()
