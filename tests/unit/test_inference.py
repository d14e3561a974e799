"""Batched generation must not depend on batching (left padding, length sorting)."""

from __future__ import annotations

import pandas as pd

from promptcl.inference import GenerationSpec, GenerationStats, generate, predict_table
from promptcl.modeling import load_state
from promptcl.prompting import PromptFormat, encode


def test_batched_generation_equals_one_by_one(tiny_model_dir, tiny_tokenizer):
    model = load_state(tiny_model_dir)
    fmt = PromptFormat()
    inputs = ["short", "a much longer input sentence with many more words in it", "mid size one"]
    prompts = [encode(tiny_tokenizer, fmt, "Echo.", x, "", None).input_ids for x in inputs]
    batched = generate(model, tiny_tokenizer, prompts, max_new_tokens=6, batch_size=3)
    single = [
        generate(model, tiny_tokenizer, [p], max_new_tokens=6, batch_size=1)[0] for p in prompts
    ]
    assert batched == single
    assert any(batched), "a random model still emits some text"


def test_predict_table_keeps_ids_and_counts_tokens(tiny_model_dir, tiny_tokenizer):
    model = load_state(tiny_model_dir)
    table = pd.DataFrame(
        {
            "id": ["b", "a"],
            "input": ["first", "second one"],
            "references": [["yes"], ["no"]],
            "instruction": ["Say yes or no."] * 2,
            "suffix": [""] * 2,
            "labels": [["yes", "no"]] * 2,
        }
    )
    stats = GenerationStats()
    gen = GenerationSpec(max_new_tokens=3, batch_size=2, max_new_tokens_per_task=(("t", 2),))
    out = predict_table(model, tiny_tokenizer, table, PromptFormat(), gen, "t", stats=stats)
    assert list(out["id"]) == ["b", "a"] and set(out["prompt_id"]) == {"original"}
    assert list(out.columns) == [
        "id",
        "prompt_id",
        "prediction",
        "raw_prediction",
        "references",
        "labels",
        "prompt_tokens",
        "input_truncated",
    ]
    assert 0 < stats.generated_tokens <= 4 and stats.prompt_tokens == out["prompt_tokens"].sum()
    assert list(out["prediction"]) == [p.strip() for p in out["raw_prediction"]]
