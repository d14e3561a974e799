"""Prompt scoring: answer-token cross-entropy of candidates on a model state."""

from __future__ import annotations

import pandas as pd
import pytest
import torch

from promptcl.evaluate.scoring import encode_pairs, score_candidates, sequence_losses
from promptcl.model.modeling import load_state
from promptcl.prompts.prompting import PromptFormat, encode
from promptcl.prompts.scores import SCORE_COLUMNS

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
    pairs = encode_pairs(tiny_tokenizer, FMT, table, CANDIDATES[:1])
    losses = sequence_losses(model, tiny_tokenizer.pad_token_id, pairs, batch_size=4)
    for (_, _, ids, labels), (loss_sum, n) in zip(pairs, losses, strict=True):
        with torch.no_grad():
            ref = model(input_ids=torch.tensor([ids]), labels=torch.tensor([labels])).loss
        assert n == sum(t != -100 for t in labels)
        assert loss_sum / n == pytest.approx(float(ref), rel=1e-4)


def test_batched_equals_one_by_one(model, tiny_tokenizer, table):
    batched = score_candidates(model, tiny_tokenizer, FMT, table, CANDIDATES, batch_size=12)
    single = score_candidates(model, tiny_tokenizer, FMT, table, CANDIDATES, batch_size=1)
    assert list(batched.columns) == SCORE_COLUMNS
    assert batched["answer_accuracy"].between(0, 100).all()
    pd.testing.assert_series_equal(batched["answer_accuracy"], single["answer_accuracy"])
    assert list(batched["candidate_id"]) == [0, 1, 4]
    assert (batched["instances"] == 4).all()
    pd.testing.assert_series_equal(batched["tokens"], single["tokens"])
    for col in ("mean_token_loss", "mean_instance_loss"):
        assert batched[col].to_numpy() == pytest.approx(single[col].to_numpy(), rel=1e-4)


def test_the_three_criteria_against_a_hand_computation(model, tiny_tokenizer, table):
    """batch_mean = mean over instances of their block's token mean (the reference's Trainer
    eval loss with a per-device batch of 3); blocks of 1 give instance_mean, one block of all
    gives token_mean."""
    pairs = encode_pairs(tiny_tokenizer, FMT, table, CANDIDATES[:1])
    losses = sequence_losses(model, tiny_tokenizer.pad_token_id, pairs)
    sums, counts = [s for s, _ in losses], [n for _, n in losses]
    blocks = [(0, 3), (3, 4)]  # 4 instances in blocks of 3: sizes 3 and 1
    want = sum(sum(sums[a:b]) / sum(counts[a:b]) * (b - a) for a, b in blocks) / 4
    out = score_candidates(
        model, tiny_tokenizer, FMT, table, CANDIDATES[:1], reference_batch_size=3
    ).iloc[0]
    assert out["mean_batch_loss"] == pytest.approx(want, rel=1e-5)
    assert out["mean_instance_loss"] == pytest.approx(
        sum(s / n for s, n in zip(sums, counts, strict=True)) / 4, rel=1e-5
    )
    assert out["mean_token_loss"] == pytest.approx(sum(sums) / sum(counts), rel=1e-5)
    ones = score_candidates(
        model, tiny_tokenizer, FMT, table, CANDIDATES[:1], reference_batch_size=1
    )
    alls = score_candidates(
        model, tiny_tokenizer, FMT, table, CANDIDATES[:1], reference_batch_size=4
    )
    assert ones["mean_batch_loss"].item() == pytest.approx(out["mean_instance_loss"], rel=1e-5)
    assert alls["mean_batch_loss"].item() == pytest.approx(out["mean_token_loss"], rel=1e-5)


def test_same_candidate_twice_gives_the_same_loss(model, tiny_tokenizer, table):
    twice = [(0, "Say yes or no."), (1, "Say yes or no.")]
    out = score_candidates(model, tiny_tokenizer, FMT, table, twice, batch_size=3)
    assert out["mean_token_loss"].iloc[0] == pytest.approx(out["mean_token_loss"].iloc[1], rel=1e-5)


def test_candidates_differ_and_losses_are_positive(model, tiny_tokenizer, table):
    out = score_candidates(model, tiny_tokenizer, FMT, table, CANDIDATES)
    assert (out["mean_token_loss"] > 0).all()
    assert out["mean_token_loss"].nunique() == 3


def test_answer_tokens_are_the_answer_and_end_of_turn(tiny_tokenizer, table):
    enc = encode(tiny_tokenizer, FMT, "Say.", "a", "", "yes")
    pairs = encode_pairs(tiny_tokenizer, FMT, table.head(1), [(0, "Say.")])
    assert sum(t != -100 for t in pairs[0][3]) == sum(t != -100 for t in enc.labels)


# --- scores that do not depend on batching -----------------------------------------------------


@pytest.fixture(scope="module")
def gpt2_model(tiny_tokenizer):
    """Learned absolute position embeddings: a loss computed at shifted positions is wrong."""
    from transformers import GPT2Config, GPT2LMHeadModel

    torch.manual_seed(0)
    config = GPT2Config(
        vocab_size=len(tiny_tokenizer), n_embd=32, n_layer=2, n_head=4, n_positions=512
    )
    return GPT2LMHeadModel(config).eval()


def test_left_padding_keeps_positions_with_absolute_position_embeddings(
    gpt2_model, tiny_tokenizer, table
):
    """Positions follow the attention mask: a short sequence batched with long ones (many left
    pads) scores exactly as alone."""
    pairs = encode_pairs(tiny_tokenizer, FMT, table, CANDIDATES)
    alone = sequence_losses(gpt2_model, tiny_tokenizer.pad_token_id, pairs, batch_size=1)
    batched = sequence_losses(gpt2_model, tiny_tokenizer.pad_token_id, pairs, batch_size=12)
    for (sum_a, n_a), (sum_b, n_b) in zip(alone, batched, strict=True):
        assert n_a == n_b
        assert sum_b == pytest.approx(sum_a, rel=1e-5, abs=1e-5)


def test_shared_prefix_scoring_equals_the_whole_sequences(model, tiny_tokenizer, table):
    """One candidate's instances share its template and instruction: computed once, the answer
    logits equal those of the whole left-padded sequences (fp32)."""
    from promptcl.evaluate.inference import MIN_SHARED_PREFIX, shared_prefix
    from promptcl.evaluate.scoring import answer_logits
    from promptcl.model.batching import left_pad

    pairs = encode_pairs(tiny_tokenizer, FMT, table, CANDIDATES[1:2])
    ids, mask = left_pad([p[2] for p in pairs], tiny_tokenizer.pad_token_id)
    assert shared_prefix(ids, mask) >= MIN_SHARED_PREFIX
    with torch.inference_mode():
        shared = answer_logits(model, pairs, tiny_tokenizer.pad_token_id, "fp32", True)
        whole = answer_logits(model, pairs, tiny_tokenizer.pad_token_id, "fp32", False)
    assert torch.equal(shared[1], whole[1])
    torch.testing.assert_close(shared[0], whole[0], rtol=1e-5, atol=1e-5)


def test_bf16_scores_do_not_depend_on_batch_size_or_composition(tiny_model_dir, tiny_tokenizer):
    """In bf16 the losses stay within a tight tolerance and the ranking is unchanged whether a
    candidate is scored alone, in small batches, or padded next to much longer sequences."""
    model = load_state(tiny_model_dir, precision="bf16")
    inputs = [f"review number {i}: " + "good " * (i % 5) for i in range(12)]
    table = pd.DataFrame(
        {
            "id": [str(i) for i in range(12)],
            "input": inputs,
            "references": [["yes"] if i % 2 else ["no"] for i in range(12)],
            "instruction": ["Say yes or no."] * 12,
            "suffix": [""] * 12,
            "labels": [["yes", "no"]] * 12,
        }
    )
    candidates = [(0, "Say yes or no."), (1, "Is it good? yes or no."), (2, "Answer yes/no.")]
    long_text = "This is a much longer instruction that adds many tokens of left padding. " * 12
    runs = {}
    for name, batch, extra in (
        ("alone", 1, []),
        ("batched", 8, []),
        ("mixed", 16, [(9, long_text)]),
    ):
        scores = score_candidates(
            model, tiny_tokenizer, FMT, table, candidates + extra, batch, precision="bf16"
        ).set_index("candidate_id")
        runs[name] = scores.loc[[0, 1, 2]]
    for name in ("batched", "mixed"):
        for column in ("mean_batch_loss", "mean_instance_loss", "mean_token_loss"):
            diff = (runs[name][column] - runs["alone"][column]).abs().max()
            assert diff < 2e-3, f"{name}: {column} moved by {diff}"
        assert list(runs[name]["mean_instance_loss"].rank()) == list(
            runs["alone"]["mean_instance_loss"].rank()
        )


def test_rank_columns_per_criterion():
    from promptcl.prompts.scores import rank_columns

    scores = pd.DataFrame(
        {
            "candidate_id": [0, 1, 2],
            "mean_batch_loss": [0.2, 0.2, 0.1],
            "mean_instance_loss": [1.0, 0.5, 0.5],
            "mean_token_loss": [0.1, 0.3, 0.2],
        }
    )
    ranked = rank_columns(scores)
    assert list(ranked["rank_batch_mean"]) == [2, 3, 1]
    assert list(ranked["rank_instance_mean"]) == [3, 1, 2]
    assert list(ranked["rank_token_mean"]) == [1, 3, 2]
