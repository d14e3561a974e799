"""Prompt scoring: answer-token cross-entropy of candidates on a model state."""

from __future__ import annotations

import pandas as pd
import pytest
import torch

from promptcl.modeling import load_state
from promptcl.prompting import PromptFormat, encode
from promptcl.scoring import SCORE_COLUMNS, encode_pairs, score_candidates, sequence_losses

FMT = PromptFormat()
CANDIDATES = [(0, "Say yes or no."), (1, "Answer with yes or no, please."), (4, "Reply: yes/no.")]


@pytest.fixture(scope="module")
def table() -> pd.DataFrame:
    inputs = ["a", "a somewhat longer input sentence", "mid length one here", "x y"]
    return pd.DataFrame(
        {
            "id": [str(i) for i in range(4)],
            "input": inputs,
            "references": [["yes"], ["no"], ["yes"], ["no"]],
            "instruction": ["Say yes or no."] * 4,
            "suffix": ["Answer yes or no."] * 4,
            "labels": [["yes", "no"]] * 4,
        }
    )


@pytest.fixture(scope="module")
def model(tiny_model_dir):
    return load_state(tiny_model_dir)


def test_matches_the_model_loss_of_single_instances(model, tiny_tokenizer, table):
    """Per instance, our loss is the model's own mean cross-entropy over the answer tokens."""
    pairs = encode_pairs(tiny_tokenizer, FMT, table, CANDIDATES[:1], 256)
    losses = sequence_losses(model, tiny_tokenizer.pad_token_id, pairs, batch_size=4)
    for (_, _, ids, labels), (loss_sum, n) in zip(pairs, losses, strict=True):
        with torch.no_grad():
            ref = model(input_ids=torch.tensor([ids]), labels=torch.tensor([labels])).loss
        assert n == sum(t != -100 for t in labels)
        assert loss_sum / n == pytest.approx(float(ref), rel=1e-4)


def test_batched_equals_one_by_one(model, tiny_tokenizer, table):
    batched = score_candidates(model, tiny_tokenizer, FMT, table, CANDIDATES, 256, batch_size=12)
    single = score_candidates(model, tiny_tokenizer, FMT, table, CANDIDATES, 256, batch_size=1)
    assert list(batched.columns) == SCORE_COLUMNS
    assert list(batched["candidate_id"]) == [0, 1, 4]
    assert (batched["instances"] == 4).all()
    pd.testing.assert_series_equal(batched["tokens"], single["tokens"])
    for col in ("mean_token_loss", "mean_instance_loss"):
        assert batched[col].to_numpy() == pytest.approx(single[col].to_numpy(), rel=1e-4)


def test_same_candidate_twice_gives_the_same_loss(model, tiny_tokenizer, table):
    twice = [(0, "Say yes or no."), (1, "Say yes or no.")]
    out = score_candidates(model, tiny_tokenizer, FMT, table, twice, 256, batch_size=3)
    assert out["mean_token_loss"].iloc[0] == pytest.approx(out["mean_token_loss"].iloc[1], rel=1e-5)


def test_candidates_differ_and_losses_are_positive(model, tiny_tokenizer, table):
    out = score_candidates(model, tiny_tokenizer, FMT, table, CANDIDATES, 256)
    assert (out["mean_token_loss"] > 0).all()
    assert out["mean_token_loss"].nunique() == 3


def test_answer_tokens_are_the_answer_and_end_of_turn(tiny_tokenizer, table):
    enc = encode(tiny_tokenizer, FMT, "Say.", "a", "", "yes", 256)
    pairs = encode_pairs(tiny_tokenizer, FMT, table.head(1), [(0, "Say.")], 256)
    assert sum(t != -100 for t in pairs[0][3]) == sum(t != -100 for t in enc.labels)
