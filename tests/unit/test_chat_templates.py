"""The chat templates of the families the workflow is pointed at (Qwen3, Qwen2.5/SmolLM2 ChatML,
Llama-2-chat, Gemma 3, a base model without one), with their real template text.

For every family: the training target is exactly the answer and the end-of-turn token, and the
prompt used for evaluation is the prompt part used in training and scoring.
"""

from __future__ import annotations

import pytest

from promptcl.prompts.prompting import (
    IGNORE_INDEX,
    PromptFormat,
    encode,
    end_of_turn_token,
    stop_token_ids,
    strip_reasoning,
)
from tests.helpers.models import FAMILIES, family_tokenizer

CHAT_FAMILIES = ["qwen3", "qwen2_5", "llama2_chat", "gemma3", "smollm2"]
ARGS = ("Classify the tweet.", "I love it", "Answer positive or negative.")


@pytest.fixture(scope="module")
def tokenizers(tiny_model_dir):
    return {family: family_tokenizer(tiny_model_dir, family) for family in FAMILIES}


def target_text(tokenizer, enc) -> str:
    return tokenizer.decode([t for t in enc.labels if t != IGNORE_INDEX])


@pytest.mark.parametrize("family", CHAT_FAMILIES)
@pytest.mark.parametrize("system_prompt", [None, "Be brief."])
def test_target_is_the_answer_and_the_end_of_turn_token(tokenizers, family, system_prompt):
    tokenizer = tokenizers[family]
    fmt = PromptFormat(system_prompt=system_prompt)
    enc = encode(tokenizer, fmt, *ARGS, "positive")
    eot = FAMILIES[family]["end_of_turn"]
    # Llama-2 renders " positive </s>": the leading space is how its tokenizer spells the word
    assert target_text(tokenizer, enc).lstrip() == "positive" + eot
    assert end_of_turn_token(tokenizer, fmt) == eot
    assert tokenizer.convert_tokens_to_ids(eot) in stop_token_ids(tokenizer, fmt)


@pytest.mark.parametrize("family", CHAT_FAMILIES)
def test_evaluation_prompt_is_the_training_and_scoring_prompt(tokenizers, family):
    tokenizer = tokenizers[family]
    fmt = PromptFormat(system_prompt="Be brief.")
    train = encode(tokenizer, fmt, *ARGS, "negative")
    generate = encode(tokenizer, fmt, *ARGS, None)
    assert generate.input_ids == train.input_ids[: train.prompt_len]
    # exactly what the family's own template gives as its generation prompt
    user = "Classify the tweet.\n\nI love it\n\nAnswer positive or negative."
    messages = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": user}]
    rendered = tokenizer.apply_chat_template(
        messages, tokenize=False, add_generation_prompt=True, enable_thinking=False
    )
    assert generate.input_ids == tokenizer(rendered, add_special_tokens=False)["input_ids"]


def test_qwen3_thinking_is_off_by_default(tokenizers):
    tokenizer = tokenizers["qwen3"]
    enc = encode(tokenizer, PromptFormat(), *ARGS, "positive")
    assert target_text(tokenizer, enc) == "positive<|im_end|>"
    prompt = tokenizer.decode(enc.input_ids[: enc.prompt_len])
    assert prompt.endswith("<|im_start|>assistant\n<think>\n\n</think>\n\n")


def test_qwen3_with_thinking_on_is_refused_with_the_config_key(tokenizers):
    """Thinking on would put an empty <think> block into every target and scored loss."""
    with pytest.raises(ValueError, match="prompt.chat_template_kwargs"):
        encode(tokenizers["qwen3"], PromptFormat(chat_template_kwargs=()), *ARGS, "positive")


def test_llama2_system_prompt_and_instruction_markers(tokenizers):
    tokenizer = tokenizers["llama2_chat"]
    enc = encode(tokenizer, PromptFormat(system_prompt="Be brief."), *ARGS, None)
    prompt = tokenizer.decode(enc.input_ids)
    assert prompt.startswith("<s>[INST] <<SYS>>\nBe brief.\n<</SYS>>\n\nClassify the tweet.")
    assert prompt.endswith("Answer positive or negative. [/INST]")


def test_gemma3_has_no_system_role(tokenizers):
    tokenizer = tokenizers["gemma3"]
    enc = encode(tokenizer, PromptFormat(system_prompt="Be brief."), *ARGS, None)
    prompt = tokenizer.decode(enc.input_ids)
    assert prompt.startswith("<bos><start_of_turn>user\nBe brief.\n\nClassify the tweet.")
    assert prompt.endswith("<end_of_turn>\n<start_of_turn>model\n")
    assert "system" not in prompt


def test_qwen2_5_default_system_prompt(tokenizers):
    prompt = tokenizers["qwen2_5"].decode(
        encode(tokenizers["qwen2_5"], PromptFormat(), *ARGS, None).input_ids
    )
    assert prompt.startswith("<|im_start|>system\nYou are Qwen, created by Alibaba Cloud.")


def test_base_model_without_template_gets_plain_text(tokenizers):
    tokenizer = tokenizers["base"]
    enc = encode(tokenizer, PromptFormat(), *ARGS, "positive")
    assert tokenizer.decode(enc.input_ids[: enc.prompt_len]) == (
        "Classify the tweet.\n\nI love it\n\nAnswer positive or negative.\n"
    )
    assert target_text(tokenizer, enc) == "positive<eos>"
    assert end_of_turn_token(tokenizer, PromptFormat()) == "<eos>"


@pytest.mark.parametrize(
    ("raw", "answer"),
    [
        ("<think>\nthe tweet sounds happy\n</think>\n\npositive", "positive"),
        ("<think>\n\n</think>\n\nnegative", "negative"),
        ("<think>still thinking when the tokens ran out", ""),
        ("positive", "positive"),
        ("a <think>x</think> b", "a  b"),
    ],
)
def test_reasoning_blocks_are_removed_before_scoring(raw, answer):
    assert strip_reasoning(raw) == answer
