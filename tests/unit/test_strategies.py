"""Prompt strategies: parsing, SAPO selection (argmin and sampled), fixed/original, PAFT draws."""

from __future__ import annotations

import math
from collections import Counter

import numpy as np
import pandas as pd
import pytest

from promptcl.prompts.candidates import COLUMNS, training_ids
from promptcl.strategies import (
    STRATEGIES,
    PaftSampler,
    SapoOptions,
    needs_scores,
    parse_strategy,
    select_sapo,
)
from tests.helpers.strategies import training_instruction

# chi-square critical value, 4 degrees of freedom, p = 0.001: the draws are seeded, so this only
# has to reject clearly non-uniform outcomes, never flake.
CHI2_DF4_P001 = 18.47


def make_candidates(valid: list[bool]) -> pd.DataFrame:
    """A candidate table in the real layout; candidate 0 is the original."""
    rows = [
        {
            "candidate_id": i,
            "text": "Original instruction." if i == 0 else f"Paraphrase number {i}.",
            "source": "original" if i == 0 else "file",
            "model": "" if i == 0 else "test",
            "request_index": -1 if i == 0 else i - 1,
            "valid": ok,
            "reject_reason": None if ok else "duplicate",
        }
        for i, ok in enumerate(valid)
    ]
    return pd.DataFrame(rows, columns=COLUMNS)


def make_scores(losses: dict[int, float]) -> pd.DataFrame:
    """Scores whose criteria agree (every instance has the same number of answer tokens)."""
    return pd.DataFrame(
        {
            "candidate_id": list(losses),
            "mean_batch_loss": list(losses.values()),
            "mean_instance_loss": list(losses.values()),
            "mean_token_loss": list(losses.values()),
            "n_tokens": [100] * len(losses),
        }
    )


def chi_square(counts: Counter, keys: list[int]) -> float:
    total = sum(counts[k] for k in keys)
    expected = total / len(keys)
    return sum((counts[k] - expected) ** 2 / expected for k in keys)


# --- parsing --------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "name, expected",
    [
        ("original", ("original", None)),
        ("sapo", ("sapo", None)),
        ("paft", ("paft", None)),
        ("fixed:3", ("fixed", 3)),
        ("fixed:0", ("fixed", 0)),
        ("fixed:12", ("fixed", 12)),
    ],
)
def test_parse_strategy(name, expected):
    assert parse_strategy(name) == expected


@pytest.mark.parametrize(
    "name", ["", "greedy", "SAPO", "fixed", "fixed:", "fixed:x", "fixed:-1", "fixed:1.5", "sapo:2"]
)
def test_parse_strategy_rejects(name):
    with pytest.raises(ValueError, match="runs.prompt_strategies"):
        parse_strategy(name)


def test_strategies_listed():
    assert set(STRATEGIES) == {"original", "sapo", "paft", "fixed"}


def test_needs_scores_only_for_sapo():
    assert needs_scores("sapo")
    assert not any(needs_scores(s) for s in ("original", "paft", "fixed:2"))
    with pytest.raises(ValueError, match="runs.prompt_strategies"):
        needs_scores("bogus")


# --- options --------------------------------------------------------------------------------------


def test_sapo_options_from_config():
    assert SapoOptions.from_config({}) == SapoOptions()
    assert SapoOptions.from_config(None).greedy
    opts = SapoOptions.from_config({"temperature": 0.5, "rescore_every": 20})
    assert opts == SapoOptions(temperature=0.5, rescore_every=20) and not opts.greedy
    assert SapoOptions(temperature=0.0).greedy


@pytest.mark.parametrize(
    "cfg",
    [
        {"temperature": -1.0},
        {"temperature": float("nan")},
        {"temperature": float("inf")},
        {"rescore_every": 0},
        {"rescore_every": 2.5},
        {"temperatur": 1.0},
    ],
)
def test_sapo_options_reject(cfg):
    with pytest.raises(ValueError):
        SapoOptions.from_config(cfg)


# --- SAPO selection -------------------------------------------------------------------------------


def test_sapo_picks_argmin():
    scores = make_scores({0: 2.0, 1: 1.5, 2: 0.7, 3: 1.1})
    assert select_sapo(scores, SapoOptions(), seed=0) == 2


def test_sapo_argmin_independent_of_row_order_and_seed():
    scores = make_scores({0: 2.0, 1: 1.5, 2: 0.7, 3: 1.1}).iloc[::-1]
    assert {select_sapo(scores, SapoOptions(), seed=s) for s in range(5)} == {2}


def test_sapo_tie_goes_to_lower_id():
    scores = make_scores({3: 0.5, 1: 0.5, 0: 0.9, 2: 0.5})
    assert select_sapo(scores, SapoOptions(), seed=0) == 1
    assert select_sapo(make_scores({0: 1.0, 4: 1.0}), SapoOptions(temperature=0.0), seed=3) == 0


def test_sapo_ignores_nan_and_inf():
    scores = make_scores({0: 1.0, 1: float("nan"), 2: 0.8, 3: float("inf")})
    assert select_sapo(scores, SapoOptions(), seed=0) == 2
    sampled = {select_sapo(scores, SapoOptions(temperature=5.0), seed=s) for s in range(200)}
    assert sampled == {0, 2}


@pytest.mark.parametrize("losses", [{}, {0: float("nan"), 1: float("nan")}])
def test_sapo_errors_without_usable_scores(losses):
    with pytest.raises(ValueError, match="no candidate"):
        select_sapo(make_scores(losses), SapoOptions(), seed=0)


def test_sapo_rejects_bad_scores():
    with pytest.raises(ValueError, match="duplicate"):
        select_sapo(make_scores({0: 1.0}).pipe(lambda d: pd.concat([d, d])), SapoOptions(), 0)
    with pytest.raises(ValueError, match="mean_batch_loss"):
        select_sapo(pd.DataFrame({"candidate_id": [0]}), SapoOptions(), 0)
    with pytest.raises(ValueError, match="mean_token_loss"):
        select_sapo(pd.DataFrame({"candidate_id": [0]}), SapoOptions(criterion="token_mean"), 0)


def test_sapo_sampling_reproducible_and_seed_dependent():
    scores = make_scores({0: 1.0, 1: 1.1, 2: 0.9, 3: 1.2, 4: 1.05})
    opts = SapoOptions(temperature=0.5)
    first = [select_sapo(scores, opts, seed=s) for s in range(40)]
    assert first == [select_sapo(scores, opts, seed=s) for s in range(40)]
    assert first == [select_sapo(scores.sample(frac=1, random_state=7), opts, s) for s in range(40)]
    assert len(set(first)) > 1


def test_sapo_tiny_temperature_is_argmin():
    scores = make_scores({0: 1.0, 1: 0.99, 2: 1.3, 3: 5000.0})
    opts = SapoOptions(temperature=1e-9)
    assert {select_sapo(scores, opts, seed=s) for s in range(50)} == {1}


def test_sapo_large_losses_are_numerically_stable():
    scores = make_scores({0: 1e6, 1: 1e6 + 1.0, 2: 1e6 + 2.0})
    picks = [select_sapo(scores, SapoOptions(temperature=1.0), seed=s) for s in range(300)]
    assert set(picks) == {0, 1, 2}
    assert Counter(picks).most_common(1)[0][0] == 0


def test_sapo_sampling_follows_softmax():
    temperature = 0.2
    scores = make_scores({0: 0.0, 1: temperature * math.log(3)})  # p = (0.75, 0.25)
    picks = [select_sapo(scores, SapoOptions(temperature=temperature), s) for s in range(1000)]
    assert abs(picks.count(0) / len(picks) - 0.75) < 0.05


def test_sapo_huge_temperature_is_uniform():
    ids = [0, 1, 2, 3, 4]
    scores = make_scores(dict(zip(ids, [0.1, 0.5, 1.0, 2.0, 4.0], strict=True)))
    opts = SapoOptions(temperature=1e9)
    counts = Counter(select_sapo(scores, opts, seed=s) for s in range(1000))
    assert set(counts) == set(ids)
    assert chi_square(counts, ids) < CHI2_DF4_P001


# --- training_instruction -------------------------------------------------------------------------


def test_original_returns_candidate_zero():
    candidates = make_candidates([True, True, False, True])
    assert training_instruction(candidates, "original") == (0, "Original instruction.")


def test_fixed_returns_that_candidate():
    candidates = make_candidates([True, True, False, True])
    assert training_instruction(candidates, "fixed:3") == (3, "Paraphrase number 3.")
    assert training_instruction(candidates, "fixed:0") == (0, "Original instruction.")


@pytest.mark.parametrize("name, cid", [("fixed:2", 2), ("fixed:9", 9)])
def test_fixed_rejects_invalid_or_unknown(name, cid):
    candidates = make_candidates([True, True, False, True])
    with pytest.raises(ValueError, match=rf"candidate {cid} .*valid ids: \[0, 1, 3\]"):
        training_instruction(candidates, name)


def test_sapo_ignores_invalid_candidates():
    candidates = make_candidates([True, True, False, True])
    scores = make_scores({0: 1.0, 1: 0.9, 2: 0.1, 3: 0.95})  # 2 has the lowest loss but is invalid
    assert training_instruction(candidates, "sapo", scores) == (1, "Paraphrase number 1.")
    opts = SapoOptions(temperature=10.0)
    picks = {training_instruction(candidates, "sapo", scores, opts, s)[0] for s in range(200)}
    assert picks == {0, 1, 3}


def test_sapo_ignores_scores_of_unknown_ids():
    candidates = make_candidates([True, True])
    scores = make_scores({0: 1.0, 1: 0.9, 7: 0.0})
    assert training_instruction(candidates, "sapo", scores) == (1, "Paraphrase number 1.")


def test_sapo_needs_scores_of_valid_candidates():
    candidates = make_candidates([True, False])
    with pytest.raises(ValueError, match="scores"):
        training_instruction(candidates, "sapo")
    with pytest.raises(ValueError, match="no candidate"):
        training_instruction(candidates, "sapo", make_scores({1: 0.5}))


def test_paft_has_no_single_instruction():
    with pytest.raises(ValueError, match="PaftSampler"):
        training_instruction(make_candidates([True, True]), "paft")


def test_unknown_strategy_rejected():
    with pytest.raises(ValueError, match="runs.prompt_strategies"):
        training_instruction(make_candidates([True]), "bogus")


def test_training_ids_are_the_valid_candidates():
    assert training_ids(make_candidates([True, False, True, True])) == [0, 2, 3]


# --- PAFT -----------------------------------------------------------------------------------------


def test_paft_reproducible_and_order_independent():
    ids = [0, 2, 3, 5, 8]
    sampler = PaftSampler(ids, n_examples=50, seed=4)
    table = sampler.table(1)
    assert len(table) == 50 and sampler.table(1) == table
    fresh = PaftSampler(list(reversed(ids)), n_examples=50, seed=4)
    backwards = {e: fresh.draw(1, e) for e in reversed(range(50))}  # other order, epoch 1 first
    assert [backwards[e] for e in range(50)] == table
    assert PaftSampler(ids, 50, 4).table(0) == sampler.table(0)


def test_paft_differs_between_epochs_and_seeds():
    ids = [0, 1, 2, 3, 4]
    sampler = PaftSampler(ids, n_examples=100, seed=0)
    assert sampler.table(0) != sampler.table(1)
    assert sampler.table(0) != PaftSampler(ids, n_examples=100, seed=1).table(0)


def test_paft_covers_pool_uniformly_with_given_ids_only():
    ids = [0, 1, 4, 6, 9]
    sampler = PaftSampler(ids, n_examples=200, seed=11)
    draws = sampler.table(0) + sampler.table(1)
    counts = Counter(draws)
    assert set(counts) == set(ids)
    assert chi_square(counts, ids) < CHI2_DF4_P001


def test_paft_single_candidate_and_empty_epoch():
    assert PaftSampler([3], n_examples=5, seed=0).table(2) == [3] * 5
    assert PaftSampler([0, 1], n_examples=0, seed=0).table(0) == []


@pytest.mark.parametrize(
    "ids, n, seed", [([], 5, 0), ([1, 1, 2], 5, 0), ([0, 1], -1, 0), ([0, 1], 5, -3)]
)
def test_paft_rejects_bad_arguments(ids, n, seed):
    with pytest.raises(ValueError):
        PaftSampler(ids, n_examples=n, seed=seed)


def test_paft_draw_bounds():
    sampler = PaftSampler([0, 1], n_examples=3, seed=0)
    with pytest.raises(IndexError):
        sampler.draw(0, 3)
    with pytest.raises(ValueError, match="epoch"):
        sampler.draw(-1, 0)


def test_paft_ids_are_plain_ints():
    draws = PaftSampler(np.array([0, 2]), n_examples=4, seed=0).table(0)
    assert all(type(d) is int for d in draws)


# --- the reference's criterion and per-stage seeds ------------------------------------------------


def test_sapo_criterion_defaults_to_the_reference_batch_mean():
    """The criteria disagree on generation tasks: long answers weigh more in token_mean."""
    scores = pd.DataFrame(
        {
            "candidate_id": [0, 1, 2],
            "mean_batch_loss": [1.3, 1.4, 1.2],  # the reference's Trainer eval loss
            "mean_instance_loss": [1.0, 1.2, 1.3],  # candidate 0 is best per instance
            "mean_token_loss": [1.5, 1.1, 1.2],  # candidate 1 per token
        }
    )
    assert SapoOptions().criterion == "batch_mean"
    assert select_sapo(scores, SapoOptions(), seed=0) == 2
    assert select_sapo(scores, SapoOptions(criterion="instance_mean"), seed=0) == 0
    assert select_sapo(scores, SapoOptions(criterion="token_mean"), seed=0) == 1
    assert SapoOptions.from_config({"criterion": "token_mean"}).criterion == "token_mean"
    with pytest.raises(ValueError, match="sapo.criterion"):
        SapoOptions(criterion="median")


def test_paft_draws_differ_between_stages_of_a_run():
    ids = [0, 1, 2, 3, 4]
    stage1 = PaftSampler(ids, n_examples=64, seed=0, stage=1)
    stage2 = PaftSampler(ids, n_examples=64, seed=0, stage=2)
    assert stage1.table(0) != stage2.table(0)
    assert stage1.table(0) == PaftSampler(ids, n_examples=64, seed=0, stage=1).table(0)


def test_sapo_sampling_is_seeded_by_run_seed_and_stage():
    scores = make_scores({0: 1.0, 1: 1.0, 2: 1.0, 3: 1.0})
    opts = SapoOptions(temperature=1.0)
    by_stage = [
        [select_sapo(scores, opts, (seed, stage)) for seed in range(30)] for stage in (1, 2)
    ]
    assert by_stage[0] != by_stage[1]
    assert by_stage[0] == [select_sapo(scores, opts, (seed, 1)) for seed in range(30)]
