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


def _prompts(tokenizer, inputs):
    return [encode(tokenizer, PromptFormat(), "Echo.", x, "", None).input_ids for x in inputs]


def test_the_greedy_loop_gives_generate_s_tokens(tiny_model_dir, tiny_tokenizer):
    """The lean decoder is exact: the same tokens as transformers' generate, stop tokens
    included, with left padding of very different lengths."""
    import torch

    from promptcl.batching import left_pad
    from promptcl.inference import greedy_tokens

    model = load_state(tiny_model_dir)
    inputs = ["a", "a much longer input sentence with many more words in it", "mid size one"]
    ids, mask = left_pad(_prompts(tiny_tokenizer, inputs), tiny_tokenizer.pad_token_id)
    with torch.inference_mode():
        reference = model.generate(
            input_ids=ids,
            attention_mask=mask,
            max_new_tokens=8,
            min_new_tokens=8,
            do_sample=False,
            pad_token_id=tiny_tokenizer.pad_token_id,
        )[:, ids.shape[1] :]
        ours = greedy_tokens(model, ids, mask, 8, stops=[])
        assert torch.equal(ours, reference)
        # a stop token ends a row; decoding ends when every row has stopped
        first = int(reference[0, 2])
        stopped = greedy_tokens(model, ids, mask, 8, stops=[first])
    hits = [(row == first).nonzero() for row in reference]
    expected = max(int(h[0]) for h in hits) + 1 if all(h.numel() for h in hits) else 8
    assert torch.equal(stopped, reference[:, :expected])
    assert torch.equal(
        greedy_tokens(model, ids, mask, 8, stops=reference[:, 0].tolist()), reference[:, :1]
    )
    texts = {
        d: generate(model, tiny_tokenizer, _prompts(tiny_tokenizer, inputs), 6, 2, decoder=d)
        for d in ("loop", "hf")
    }
    assert texts["loop"] == texts["hf"]


def test_generation_spec_names_a_bad_decoder():
    import pytest

    assert GenerationSpec.from_config({}).decoder == "loop"
    with pytest.raises(ValueError, match="generation.decoder"):
        GenerationSpec.from_config({"decoder": "beam"})


def test_length_batches_cap_rows_and_padded_tokens():
    from promptcl.batching import length_batches

    lengths = [100] * 15 + [500] + [90] * 8
    batches = length_batches(lengths, 8)
    assert sorted(i for b in batches for i in b) == list(range(len(lengths)))
    assert batches[0] == [15], "the outlier is batched alone: 8 × median 100 = 800 < 2 × 500"
    for batch in batches:
        assert len(batch) <= 8
        assert len(batch) * max(lengths[i] for i in batch) <= 8 * 100 or len(batch) == 1
    assert [lengths[b[0]] for b in batches] == sorted(
        (lengths[b[0]] for b in batches), reverse=True
    )
    assert length_batches([], 4) == []
