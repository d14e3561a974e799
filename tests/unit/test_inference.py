"""Batched generation must not depend on batching (left padding, length sorting)."""

from __future__ import annotations

import pandas as pd

from promptcl.evaluate.inference import GenerationSpec, GenerationStats, generate, predict_table
from promptcl.model.modeling import load_state
from promptcl.prompts.prompting import PromptFormat, encode


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

    from promptcl.evaluate.inference import greedy_tokens
    from promptcl.model.batching import left_pad

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
    from promptcl.model.batching import length_batches

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


def test_the_reserved_cache_layer_holds_what_a_growing_one_holds_without_copying():
    """ReservedLayer returns DynamicLayer's keys and values at every step (prompt, decode
    steps, and past its reservation), and within the reservation writes in place."""
    import torch
    from transformers import DynamicLayer

    from promptcl.evaluate.inference import ReservedLayer

    ours, reference = ReservedLayer(extra=3), DynamicLayer()
    steps = [torch.randn(2, 3, n, 4) for n in (5, 1, 1, 1, 1, 2)]
    buffer = None
    for i, new in enumerate(steps):
        got, want = ours.update(new, -new), reference.update(new, -new)
        assert torch.equal(got[0], want[0]) and torch.equal(got[1], want[1])
        assert ours.get_seq_length() == reference.get_seq_length()
        if i <= 3:  # the prompt and 3 reserved positions live in one buffer
            buffer = buffer or got[0].untyped_storage().data_ptr()
            assert got[0].untyped_storage().data_ptr() == buffer


def test_shared_prefix_counts_the_rows_common_leading_tokens():
    import torch

    from promptcl.evaluate.inference import shared_prefix
    from promptcl.model.batching import left_pad

    ids, mask = left_pad([[5, 6, 7, 8, 9], [5, 6, 7, 1], [5, 6, 7, 8]], 0)
    assert shared_prefix(ids, mask) == 3
    # every row keeps at least one token of its own, even when one row is another's prefix
    ids, mask = left_pad([[5, 6, 7], [5, 6, 7, 8, 9]], 0)
    assert shared_prefix(ids, mask) == 2
    ids, mask = left_pad([[1, 6, 7], [5, 6, 7]], 0)
    assert shared_prefix(ids, mask) == 0
    assert shared_prefix(*left_pad([[5, 6, 7]], 0)) == 0  # one row: nothing to share
    assert shared_prefix(torch.tensor([[4, 4], [4, 4]]), torch.ones(2, 2)) == 1


def test_prefix_sharing_gives_the_tokens_of_the_whole_prompt_pass(tiny_model_dir, tiny_tokenizer):
    """The shared leading tokens computed once (batch 1) and the rows' own tokens after them,
    pads in the middle: in fp32 the same tokens as the whole left-padded prompts."""
    import torch

    from promptcl.evaluate import inference
    from promptcl.evaluate.inference import greedy_tokens, shared_prefix
    from promptcl.model.batching import left_pad

    model = load_state(tiny_model_dir)
    inputs = ["a", "a much longer input sentence with many more words in it", "mid size one", "b"]
    ids, mask = left_pad(_prompts(tiny_tokenizer, inputs), tiny_tokenizer.pad_token_id)
    assert shared_prefix(ids, mask) >= inference.MIN_SHARED_PREFIX
    calls = []
    hook = model.register_forward_pre_hook(
        lambda _, args, kwargs: calls.append(kwargs["input_ids"].shape), with_kwargs=True
    )
    with torch.inference_mode():
        shared = greedy_tokens(model, ids, mask, 8, stops=[])
        prefill_shapes, calls[:] = calls[:2], []
        whole = greedy_tokens(model, ids, mask, 8, stops=[], share_prefix=False)
    hook.remove()
    assert prefill_shapes[0][0] == 1 and prefill_shapes[1][1] < ids.shape[1], prefill_shapes
    assert calls[0] == ids.shape
    assert torch.equal(shared, whole)


def test_prefix_sharing_with_sliding_window_layers_only_where_the_window_covers_the_batch():
    """Gemma 3's sliding-window layers count cache slots: sharing (pads after the prefix) is
    used only when the window covers prompt and answer, and then gives the same tokens."""
    import torch

    from promptcl.evaluate.inference import _shareable, greedy_tokens
    from promptcl.model.batching import left_pad
    from tests.helpers.models import tiny_gemma3

    prefix = list(range(10, 22))
    ids, mask = left_pad([prefix + [3, 4, 5], prefix + [7], prefix + [8, 9, 30, 31, 32, 33]], 0)
    for window, shared in ((16, False), (512, True)):
        model = tiny_gemma3(window).eval()
        assert _shareable(model, ids.shape[1] + 6) is shared
        with torch.inference_mode():
            got = greedy_tokens(model, ids, mask, 6, [])
            want = greedy_tokens(model, ids, mask, 6, [], share_prefix=False)
        assert torch.equal(got, want)
