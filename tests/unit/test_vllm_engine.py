"""The vllm engine's client side without vLLM: what it sends, and the clear errors of an engine
that cannot start (vLLM missing, a rank over vLLM's limit, a failing worker). The engine itself
runs in tests/workflow/test_vllm.py."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pandas as pd
import pytest

from promptcl.evaluate.inference import GenerationSpec, Requests, decode_answer
from promptcl.evaluate.vllm_engine import EngineError, VllmSpec, check_rank, generate, max_model_len
from promptcl.evaluate.vllm_worker import classify, lora_rank_limit


def requests(prompts, new_tokens=4, task="t") -> Requests:
    table = pd.DataFrame({"id": [str(i) for i in range(len(prompts))]})
    return Requests(task, "original", table, prompts, [False] * len(prompts), new_tokens, [2])


def test_vllm_ranks_and_the_rank_error_names_the_settings():
    assert [lora_rank_limit(r) for r in (1, 2, 8, 9, 24, 512)] == [1, 8, 8, 16, 32, 512]
    assert check_rank(0) == 0
    with pytest.raises(EngineError, match=r"rank 600 .*lora\.r .*generation\.engine: hf"):
        check_rank(600)


def test_the_context_fits_the_longest_prompt_and_its_answer():
    assert max_model_len(VllmSpec(), [requests([[1] * 70, [1] * 3], new_tokens=16)]) == 128
    assert max_model_len(VllmSpec(max_model_len=4096), [requests([[1] * 70])]) == 4096


def test_a_missing_vllm_environment_names_the_key_and_the_make_target(tmp_path, tiny_tokenizer):
    spec = VllmSpec(python=str(tmp_path / "no-venv/bin/python"))
    with pytest.raises(EngineError, match=r"vllm\.python: .* does not exist.*make vllm"):
        generate(spec, tmp_path, None, "fp32", [requests([[1, 2]])], tiny_tokenizer)


def test_a_worker_without_vllm_reports_it(tmp_path, tiny_tokenizer):
    """This project's own interpreter has no vLLM: the worker starts, fails to import it, and
    the job's error says so and how to get it."""
    spec = VllmSpec(python=sys.executable)
    with pytest.raises(EngineError, match=r"vLLM cannot be imported by .*make vllm"):
        generate(spec, tmp_path, None, "fp32", [requests([[1, 2]])], tiny_tokenizer)


def test_failures_are_classified_by_cause():
    assert classify(ImportError("No module named 'vllm'")) == "missing"
    assert classify(RuntimeError("CUDA out of memory. Tried to allocate")) == "memory"
    assert classify(ValueError("max_lora_rank (600) must be one of ...")) == "rank"
    assert classify(ValueError("something else")) == "engine"


def test_answers_are_cut_at_the_first_stop_like_the_hf_engine(tiny_tokenizer):
    ids = tiny_tokenizer("positive", add_special_tokens=False)["input_ids"]
    eos = tiny_tokenizer.eos_token_id
    assert decode_answer(tiny_tokenizer, [*ids, eos, *ids], [eos]) == ("positive", len(ids) + 1)
    assert decode_answer(tiny_tokenizer, ids, [eos]) == ("positive", len(ids))


def test_the_engine_is_a_config_choice():
    assert GenerationSpec.from_config({}).engine == "hf"
    with pytest.raises(ValueError, match="generation.engine"):
        GenerationSpec.from_config({"engine": "tgi"})
    spec = VllmSpec.from_config({"python": "envs/v/bin/python"}, Path("/w"))
    assert spec.python == "/w/envs/v/bin/python"
    assert json.loads(json.dumps(spec.__dict__))["gpu_memory_utilization"] == 0.9


def test_a_worker_killed_before_it_reports_names_the_memory_settings(tmp_path, tiny_tokenizer):
    """An engine killed by the kernel (out of memory) writes no response: the job says what
    to lower."""
    fake = tmp_path / "python"
    fake.write_text("#!/bin/sh\nkill -9 $$\n")
    fake.chmod(0o755)
    with pytest.raises(EngineError, match=r"code -9 .*killed for memory.*max_num_seqs"):
        generate(
            VllmSpec(python=str(fake)), tmp_path, None, "fp32", [requests([[1]])], tiny_tokenizer
        )
