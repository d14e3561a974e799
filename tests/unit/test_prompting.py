"""Prompt assembly: what the model sees, and which tokens carry loss."""

from __future__ import annotations

import pytest

from promptcl.prompts.prompting import (
    IGNORE_INDEX,
    PromptFormat,
    answer_text,
    encode,
    prompt_text,
    render_user_turn,
    stop_token_ids,
)


def _answer_tokens(tokenizer, enc):
    return tokenizer.decode([t for t in enc.labels if t != IGNORE_INDEX])


def test_render_user_turn_drops_empty_parts():
    fmt = PromptFormat()
    assert render_user_turn(fmt, "Do X.", "some input", "") == "Do X.\n\nsome input"
    assert render_user_turn(fmt, "Do X.", "in", "Answer yes.") == "Do X.\n\nin\n\nAnswer yes."


def test_template_fields_are_validated():
    with pytest.raises(ValueError, match="prompt.template"):
        PromptFormat(template="{instruction} {question}")
    with pytest.raises(ValueError, match="prompt.template"):
        PromptFormat(template="{instruction} only")


def test_chat_template_masks_everything_but_the_answer(tiny_tokenizer):
    fmt = PromptFormat()
    enc = encode(
        tiny_tokenizer, fmt, "Classify.", "I love it", "Say positive or negative.", "positive"
    )
    assert _answer_tokens(tiny_tokenizer, enc) == "positive<|im_end|>"
    prompt = tiny_tokenizer.decode(enc.input_ids[: enc.prompt_len])
    # SmolLM2's template adds its default system prompt when none is given
    assert prompt.startswith("<|im_start|>system\nYou are a helpful AI assistant")
    assert prompt.endswith("<|im_start|>assistant\n")
    assert "Classify.\n\nI love it\n\nSay positive or negative." in prompt
    assert all(label == IGNORE_INDEX for label in enc.labels[: enc.prompt_len])
    assert enc.labels[enc.prompt_len :] == enc.input_ids[enc.prompt_len :]


def test_explicit_system_prompt_replaces_the_default(tiny_tokenizer):
    fmt = PromptFormat(system_prompt="Be terse.")
    text = prompt_text(tiny_tokenizer, fmt, "hi")
    assert "Be terse." in text and "SmolLM" not in text


def test_prompt_only_encoding_matches_training_prefix(tiny_tokenizer):
    fmt = PromptFormat()
    train = encode(tiny_tokenizer, fmt, "Do.", "x y z", "", "yes")
    gen = encode(tiny_tokenizer, fmt, "Do.", "x y z", "", None)
    assert gen.input_ids == train.input_ids[: train.prompt_len]
    assert gen.labels == [IGNORE_INDEX] * len(gen.input_ids)


def test_plain_format_without_chat_template(tiny_tokenizer):
    fmt = PromptFormat(use_chat_template=False)
    assert prompt_text(tiny_tokenizer, fmt, "Q") == "Q\n"
    assert answer_text(tiny_tokenizer, fmt, "Q", "A") == "A" + tiny_tokenizer.eos_token
    enc = encode(tiny_tokenizer, fmt, "Do.", "x", "", "yes")
    assert _answer_tokens(tiny_tokenizer, enc) == "yes" + tiny_tokenizer.eos_token


def test_long_inputs_are_shortened_not_the_instruction_or_answer(tiny_tokenizer):
    fmt = PromptFormat(max_input_tokens=50)
    long_input = " ".join(f"word{i}" for i in range(400))
    enc = encode(tiny_tokenizer, fmt, "INSTRUCTION HERE.", long_input, "SUFFIX HERE.", "yes")
    assert enc.truncated
    text = tiny_tokenizer.decode(enc.input_ids)
    assert "INSTRUCTION HERE." in text and "SUFFIX HERE." in text
    assert _answer_tokens(tiny_tokenizer, enc) == "yes<|im_end|>"
    kept = tiny_tokenizer.decode(tiny_tokenizer(long_input)["input_ids"][:50])
    assert f"INSTRUCTION HERE.\n\n{kept}\n\nSUFFIX HERE." in text
    short = encode(tiny_tokenizer, fmt, "Do.", "a short input", "", "yes")
    assert not short.truncated
    with pytest.raises(ValueError, match="prompt.max_input_tokens"):
        PromptFormat(max_input_tokens=0)


def _kept_input(tokenizer, enc, fmt) -> str:
    text = tokenizer.decode(enc.input_ids[: enc.prompt_len])
    return text.split("\n\n")[1]


def test_one_input_budget_whatever_the_instruction_or_answer(tiny_tokenizer):
    """A long paraphrase must be scored on the same part of the input as a short one, and
    evaluation must see what training saw."""
    fmt = PromptFormat(max_input_tokens=40, use_chat_template=False)
    long_input = " ".join(f"token{i}" for i in range(200))
    seen = set()
    for instruction in ("Do.", "Please read the following text carefully and then do it. " * 5):
        for answer in (None, "yes", "a much longer answer of many many words " * 8):
            enc = encode(tiny_tokenizer, fmt, instruction, long_input, "", answer)
            assert enc.truncated
            seen.add(_kept_input(tiny_tokenizer, enc, fmt))
    assert len(seen) == 1


def test_stop_tokens_include_end_of_turn(tiny_tokenizer):
    assert tiny_tokenizer.convert_tokens_to_ids("<|im_end|>") in stop_token_ids(tiny_tokenizer)


def test_chat_template_kwargs_come_from_the_config():
    assert PromptFormat.from_config({}).template_kwargs == {"enable_thinking": False}
    fmt = PromptFormat.from_config({"chat_template_kwargs": {"enable_thinking": True, "x": 1}})
    assert fmt.template_kwargs == {"enable_thinking": True, "x": 1}
    assert PromptFormat.from_config({"max_input_tokens": 7}).max_input_tokens == 7
