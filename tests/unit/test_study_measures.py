"""Pre-update measurements of the study on a tiny model, against direct computations."""

from __future__ import annotations

import math

import pandas as pd
import pytest
import torch

from promptcl.evaluate.inference import GenerationSpec
from promptcl.evaluate.scoring import encode_pairs, sequence_stats
from promptcl.model.modeling import load_state
from promptcl.prompts.prompting import PromptFormat
from promptcl.study.measures import (
    MEASURES,
    MeasureSpec,
    gradient_summary,
    instruction_perplexity,
    loss_gradient,
    measure_candidates,
    target_weights,
)

FMT = PromptFormat()
CANDIDATES = [(0, "Say yes or no."), (2, "Answer with yes or no, please. Be brief.")]


def _table(inputs: list[str]) -> pd.DataFrame:
    return pd.DataFrame(
        {
            "id": [str(i) for i in range(len(inputs))],
            "input": inputs,
            "references": [["yes"] if i % 2 else ["no"] for i in range(len(inputs))],
            "instruction": ["Say yes or no."] * len(inputs),
            "suffix": [""] * len(inputs),
            "labels": [["yes", "no"]] * len(inputs),
        }
    )


T2 = _table(["a", "a somewhat longer input sentence", "mid length one", "x y", "unused"])
T1 = _table(["first task text", "another one", "short"])


@pytest.fixture(scope="module")
def model(tiny_model_dir):
    return load_state(tiny_model_dir)


def _naive_gradient(model, pairs, weights):
    """Gradient of the mean per-instance mean loss, one unpadded sequence at a time."""
    model.zero_grad(set_to_none=True)
    for p in model.parameters():
        p.requires_grad_(False)
    for p in weights.values():
        p.requires_grad_(True)
    with torch.enable_grad():
        for _, _, ids, labels in pairs:
            loss = model(input_ids=torch.tensor([ids]), labels=torch.tensor([labels])).loss
            (loss / len(pairs)).backward()
    grads = {k: p.grad.clone() for k, p in weights.items()}
    for p in weights.values():
        p.grad = None
        p.requires_grad_(False)
    return grads


def test_target_weights_of_a_plain_and_a_peft_model(model, tiny_model_dir):
    from peft import LoraConfig, get_peft_model

    plain = target_weights(model, ["q_proj", "v_proj"])
    layers = model.config.num_hidden_layers
    assert len(plain) == 2 * layers and "q_proj.0" in plain and f"v_proj.{layers - 1}" in plain
    wrapped = get_peft_model(load_state(tiny_model_dir), LoraConfig(target_modules=["q_proj"]))
    found = target_weights(wrapped, ["q_proj", "v_proj"])
    assert found.keys() == plain.keys()  # the base weights under the LoRA, not the LoRA's own
    assert all(p.shape == plain[k].shape for k, p in found.items())
    with pytest.raises(ValueError, match="lora.target_modules: no weights of \\['nope'\\]"):
        target_weights(model, ["nope"])


def test_gradient_equals_one_sequence_at_a_time(model, tiny_tokenizer):
    pairs = encode_pairs(tiny_tokenizer, FMT, T2.head(4), CANDIDATES[1:])
    weights = target_weights(model, ["q_proj", "v_proj"])
    batched = loss_gradient(model, tiny_tokenizer.pad_token_id, pairs, weights, 3, "fp32")
    naive = _naive_gradient(model, pairs, weights)
    for key in naive:
        assert torch.allclose(batched[key], naive[key], atol=1e-5, rtol=1e-4), key
    assert not any(p.requires_grad for p in model.parameters()), "the model is left frozen"


def test_gradient_summary_cosines():
    g = {"q_proj.0": torch.tensor([1.0, 0.0]), "v_proj.0": torch.tensor([0.0, 2.0])}
    ref = {"q_proj.0": torch.tensor([1.0, 0.0]), "v_proj.0": torch.tensor([0.0, -1.0])}
    out = gradient_summary(g, ref, ["q_proj", "v_proj"])
    assert out["grad_norm"] == pytest.approx(math.sqrt(5))
    assert out["grad_cosine_q_proj"] == pytest.approx(1.0)
    assert out["grad_cosine_v_proj"] == pytest.approx(-1.0)
    assert out["grad_cosine"] == pytest.approx((1 - 2) / (math.sqrt(5) * math.sqrt(2)))


def test_instruction_perplexity_of_the_text_alone(model, tiny_tokenizer):
    text = CANDIDATES[1][1]
    ids = tiny_tokenizer(text)["input_ids"]
    with torch.no_grad():
        logits = model(input_ids=torch.tensor([ids])).logits[0]
    logprobs = torch.log_softmax(logits.double(), dim=-1)
    nll = -sum(float(logprobs[t - 1, ids[t]]) for t in range(1, len(ids))) / (len(ids) - 1)
    found = instruction_perplexity(model, tiny_tokenizer, text, "fp32")
    assert found == pytest.approx(math.exp(nll), rel=1e-5)
    assert math.isnan(instruction_perplexity(model, tiny_tokenizer, "", "fp32"))


def test_teacher_forced_accuracy_counts_argmax_answer_tokens(model, tiny_tokenizer):
    pairs = encode_pairs(tiny_tokenizer, FMT, T2.head(2), CANDIDATES[:1])
    found = sequence_stats(model, tiny_tokenizer.pad_token_id, pairs, batch_size=2)
    for (_, _, ids, labels), stat in zip(pairs, found, strict=True):
        with torch.no_grad():
            logits = model(input_ids=torch.tensor([ids])).logits[0]
        want = sum(
            int(logits[t - 1].argmax()) == labels[t]
            for t in range(1, len(ids))
            if labels[t] != -100
        )
        assert stat.correct == want and 0 <= stat.correct <= stat.tokens


def test_measure_candidates_columns_and_consistency(model, tiny_tokenizer):
    spec = MeasureSpec(instances=4, metric="rougeL", modules=("q_proj", "v_proj"), batch_size=3)
    measures, gradients = measure_candidates(
        model,
        tiny_tokenizer,
        FMT,
        T2,
        CANDIDATES,
        T1,
        "Say yes or no.",
        spec,
        GenerationSpec(max_new_tokens=3, batch_size=4),
        "fp32",
        "t2",
    )
    assert set(MEASURES) <= set(measures.columns)
    assert list(measures["candidate_id"]) == [0, 2]
    assert (measures["instances"] == 4).all()
    for _, row in measures.iterrows():
        assert row["instruction_perplexity"] > 1
        assert 0 <= row["answer_accuracy"] <= 100 and 0 <= row["zero_shot_score"] <= 100
        assert -1 <= row["grad_cosine_q_proj"] <= 1 and row["grad_norm"] > 0
    assert measures.loc[0, "rouge_to_original"] == pytest.approx(100.0)
    assert measures.loc[1, "prompt_tokens"] > measures.loc[0, "prompt_tokens"]
    layers = model.config.num_hidden_layers
    assert len(gradients) == 2 * 2 * layers
    assert set(gradients.columns) == {"candidate_id", "module", "layer", "cosine", "norm"}
