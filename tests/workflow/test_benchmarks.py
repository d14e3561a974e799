"""The benchmarks still run (on the tiny model, tiny sizes): a figure that cannot be produced
is no figure. They print and save their numbers; this only checks they do, and that each MFU is
the stated convention's. No upper bound: the tiny model's N is almost all embedding and output
matrices, which only the answer positions multiply, so its convention MFU can exceed 1."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from tests.helpers import REPO


def run(script: str, *args: str, cwd) -> str:
    proc = subprocess.run(
        [sys.executable, str(REPO / "benchmarks" / script), *args],
        capture_output=True,
        text=True,
        timeout=600,
        cwd=cwd,
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return proc.stdout


def test_scoring_benchmark_runs(tiny_model_dir, tmp_path):
    out = run(
        "scoring_throughput.py",
        *("--model", str(tiny_model_dir), "--instances", "4", "--candidates", "2"),
        *("--batch-size", "4", "--precision", "fp32", "--output", str(tmp_path / "s.json")),
        cwd=tmp_path,
    )
    figures = json.loads((tmp_path / "s.json").read_text())
    assert figures["batched_tokens_per_s"] > 0 and figures["max_loss_difference"] < 1e-4
    assert "speedup" in out
    expected = figures["batched_tokens_per_s"] * 2 * figures["model_parameters"]
    assert figures["batched_mfu"] == pytest.approx(
        expected / (figures["mfu_reference_tflops"] * 1e12), abs=2e-3
    ), "the stated convention: 2N per scored token against the rate measured in the run"


def test_model_benchmark_runs(tiny_model_dir, tmp_path):
    out = run(
        "model_throughput.py",
        *("--model", str(tiny_model_dir), "--train-examples", "8", "--prompts", "4"),
        *("--batch-size", "4", "--new-tokens", "2", "--precision", "fp32"),
        *("--output", str(tmp_path / "m.json")),
        cwd=tmp_path,
    )
    figures = json.loads((tmp_path / "m.json").read_text())
    for path in ("legacy", "current_random", "current", "packed"):
        assert figures[f"train_{path}_tokens_per_s"] > 0
        expected = figures[f"train_{path}_tokens_per_s"] * 4 * figures["model_parameters"]
        assert figures[f"train_{path}_mfu"] == pytest.approx(
            expected / (figures["mfu_reference_tflops"] * 1e12), abs=2e-3
        ), "the stated convention: 4N per trained token against the rate measured in the run"
    assert figures["mfu_reference_tflops"] == figures["matmul_fp32_2048x2048x2048_tflops"] or (
        figures["mfu_reference_tflops"] == figures["matmul_fp32_1600x576x576_tflops"]
    )
    for path in ("legacy", "current"):
        assert figures[f"decode_{path}_tokens_per_s"] > 0
    assert figures["train_speedup"] > 0 and figures["decode_speedup"] > 0
    assert figures["train_current_tokens"] == figures["train_current_random_tokens"], (
        "grouping reorders the epoch's examples, it trains on the same tokens"
    )
    assert figures["train_packed_tokens"] == figures["train_current_tokens"], "packing: no pads"
    assert figures["train_loss_curve_max_abs_diff"] < 1e-3, "fp32: both paths compute one loss"
    assert "prefill_mfu" in out and "flop_convention" in out


def test_vllm_benchmark_runs(tmp_path):
    """Both engines on the same requests in one run, start-up apart from generation; on a tiny
    fp32 model the answers are identical."""
    from tests.helpers.models import build_tiny_model

    model = build_tiny_model(tmp_path / "model", head_dim=64)
    out = run(
        "vllm_throughput.py",
        *("--model", str(model), "--items", "3", "--evaluations", "demo_stage"),
        *("--precision", "fp32", "--enforce-eager", "--output", str(tmp_path / "v.json")),
        cwd=tmp_path,
    )
    figures = json.loads((tmp_path / "v.json").read_text())
    assert figures["demo_stage_prompts"] == 12
    for engine in ("hf", "vllm"):
        assert figures[f"demo_stage_{engine}_tokens_per_s"] > 0
        assert figures[f"demo_stage_{engine}_start_s"] > 0
    assert figures["demo_stage_identical_answers"] == 1.0
    assert "model name" not in figures["cpu"] and figures["matmul_reference_tflops"] > 0
    assert "steady_speedup" in out
