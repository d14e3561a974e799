"""Likelihood evaluation: the gold answer's log-probability and rank classification, checked
against a direct computation with the model's own forward pass."""

from __future__ import annotations

import math

import pandas as pd
import pytest
import torch

from promptcl.evaluate.likelihood import LIKELIHOOD_COLUMNS, answer_choices, likelihood_table
from promptcl.model.modeling import load_state
from promptcl.prompts.prompting import IGNORE_INDEX, PromptFormat, encode

FMT = PromptFormat()


@pytest.fixture(scope="module")
def table() -> pd.DataFrame:
    inputs = ["a", "a somewhat longer input sentence", "mid length one here", "x y", "z"]
    return pd.DataFrame(
        {
            "id": [str(i) for i in range(5)],
            "input": inputs,
            # item 3's gold answer is spelled differently from its label; item 4's is no label
            "references": [["yes"], ["no"], ["maybe so"], ["Yes!"], ["perhaps"]],
            "instruction": ["Say yes, no or maybe so."] * 5,
            "suffix": ["Answer:"] * 5,
            "labels": [["yes", "no", "maybe so"]] * 5,
        }
    )


@pytest.fixture(scope="module")
def model(tiny_model_dir):
    return load_state(tiny_model_dir)


def direct_logprob(model, tokenizer, row, answer: str, instruction: str) -> tuple[float, int]:
    """Total log-probability of ``answer`` and its token count, from one unpadded forward."""
    enc = encode(tokenizer, FMT, instruction, row.input, row.suffix, answer)
    with torch.no_grad():
        logits = model(input_ids=torch.tensor([enc.input_ids])).logits[0].float()
    logp = torch.log_softmax(logits[:-1], dim=-1)
    target = torch.tensor(enc.labels[1:])
    keep = target != IGNORE_INDEX
    picked = logp[keep].gather(1, target[keep][:, None])
    return float(picked.sum()), int(keep.sum())


def test_answer_choices_put_the_gold_first_and_dedupe_labels():
    assert answer_choices(["no"], ["yes", "No", "no", "maybe"]) == (
        ["no", "yes", "maybe"],
        [0, 1, 2],
    )
    assert answer_choices(["other"], ["yes", "no"]) == (["other", "yes", "no"], [1, 2])
    assert answer_choices(["free text"], []) == (["free text"], [])
    with pytest.raises(ValueError, match="no reference"):
        answer_choices([], ["yes"])


@pytest.mark.parametrize("batch_size", [1, 16])
def test_values_equal_a_direct_computation(model, tiny_tokenizer, table, batch_size):
    out = likelihood_table(model, tiny_tokenizer, table, FMT, batch_size=batch_size)
    assert tuple(out.columns) == LIKELIHOOD_COLUMNS
    for row, got in zip(table.itertuples(index=False), out.itertuples(index=False), strict=True):
        gold_sum, gold_n = direct_logprob(
            model, tiny_tokenizer, row, row.references[0], row.instruction
        )
        assert got.gold_tokens == gold_n
        assert got.gold_logprob_sum == pytest.approx(gold_sum, abs=1e-4)
        assert got.gold_logprob == pytest.approx(gold_sum / gold_n, abs=1e-5)
        # rank classification: the label whose whole answer is most probable
        scores = {
            label: direct_logprob(model, tiny_tokenizer, row, label, row.instruction)[0]
            for label in ("yes", "no", "maybe so")
        }
        gold_norm = row.references[0].lower().strip("!")
        if gold_norm in scores:  # the gold answer stands for its label, spelled as the gold
            scores[gold_norm] = gold_sum
        best = max(scores, key=scores.get)
        assert got.rank_prediction.lower().strip("!") == best
        assert got.rank_accuracy == (100.0 if best == gold_norm else 0.0)


def test_an_overridden_prompt_and_a_generation_task(model, tiny_tokenizer, table):
    free = table.assign(labels=[[]] * len(table))
    out = likelihood_table(
        model, tiny_tokenizer, free, FMT, prompt_id="heldout_1", instruction="Reply briefly."
    )
    assert (out["prompt_id"] == "heldout_1").all()
    assert out["rank_accuracy"].isna().all() and out["rank_prediction"].isna().all()
    assert (out["answers_scored"] == 1).all()
    row = next(free.itertuples(index=False))
    expected, n = direct_logprob(model, tiny_tokenizer, row, row.references[0], "Reply briefly.")
    assert out["gold_logprob"].iloc[0] == pytest.approx(expected / n, abs=1e-5)


def test_items_do_not_depend_on_their_batch(model, tiny_tokenizer, table):
    """An item's numbers are the same alone and among the others (positions follow the mask)."""
    whole = likelihood_table(model, tiny_tokenizer, table, FMT)
    for i in range(len(table)):
        alone = likelihood_table(model, tiny_tokenizer, table.iloc[[i]], FMT)
        assert alone["gold_logprob"].iloc[0] == pytest.approx(
            whole["gold_logprob"].iloc[i], abs=1e-5
        )
        assert alone["rank_prediction"].iloc[0] == whole["rank_prediction"].iloc[i]
    assert not math.isnan(whole["gold_logprob"].sum())


def direct_sums(model, item) -> list[tuple[float, int]]:
    out = []
    for answer in item.answers:
        with torch.no_grad():
            logits = model(input_ids=torch.tensor([item.prompt + answer])).logits[0].float()
        logp = torch.log_softmax(logits[len(item.prompt) - 1 : -1], dim=-1)
        out.append((float(logp.gather(1, torch.tensor(answer)[:, None]).sum()), len(answer)))
    return out


def test_sliding_window_models_score_each_item_as_whole_sequences():
    """Gemma 3's sliding-window cache is not copied between rows: each item's answers are one
    batch of whole sequences, with the same numbers."""
    from promptcl.evaluate.likelihood import Item, _copyable, answer_log_likelihoods
    from tests.helpers.models import tiny_gemma3

    model = tiny_gemma3(window=4).eval()
    assert not _copyable(model)
    prefix = list(range(10, 22))
    items = [
        Item(prefix + [3, 4, 5], [[7], [8, 9], [30, 31, 32]]),
        Item(prefix + [6], [[40, 41]]),
    ]
    got = answer_log_likelihoods(model, 0, items, batch_size=8)
    for item, found in zip(items, got, strict=True):
        for (value, n), (want, want_n) in zip(found, direct_sums(model, item), strict=True):
            assert n == want_n and value == pytest.approx(want, abs=1e-4)
