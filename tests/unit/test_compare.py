"""Runs over seeds and paired comparisons with the baseline, on known data."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from scipy import stats as sp

from promptcl.analysis.compare import (
    MEASURES,
    bootstrap_measures,
    common_ids,
    compare_instances,
    compare_seeds,
    instance_scores,
    seed_table,
)
from promptcl.analysis.metrics import continual_metrics
from promptcl.analysis.stats import mde_t, mde_z
from promptcl.analysis.summary_text import format_comparisons, readable_verdict

BASELINE = {"method": "inclora", "strategy": "original"}
SEQ, UNSEEN = ["a", "b"], ["u"]


def _summary(values: dict[tuple[str, str], list[float]]) -> pd.DataFrame:
    rows = []
    for (method, strategy), per_seed in values.items():
        for seed, ap in enumerate(per_seed):
            row = {"sequence": "s", "method": method, "strategy": strategy, "seed": seed}
            row.update({"protocol": "original_prompt", "metric": "label_accuracy"})
            row.update({m: ap + i for i, m in enumerate(MEASURES)})
            rows.append(row)
    return pd.DataFrame(rows)


def test_seed_table_is_the_t_interval_of_each_configuration():
    summary = _summary({("inclora", "original"): [50.0, 54.0, 49.0]})
    table = seed_table(summary).set_index("measure")
    low, high = sp.t.interval(0.95, 2, loc=51.0, scale=sp.sem([50.0, 54.0, 49.0]))
    assert table.loc["AP", "mean"] == pytest.approx(51.0) and table.loc["AP", "n"] == 3
    assert (table.loc["AP", "ci_low"], table.loc["AP", "ci_high"]) == pytest.approx((low, high))
    assert table.loc["BWT", "mean"] == pytest.approx(52.0)  # AP + 1 in _summary


def test_compare_seeds_pairs_by_seed_and_holm_corrects():
    a, b = [55.0, 58.0, 60.0], [50.0, 51.0, 53.0]
    summary = _summary({("inclora", "original"): b, ("inclora", "sapo"): a})
    table = compare_seeds(summary, BASELINE)
    assert len(table) == len(MEASURES) and set(table["strategy"]) == {"sapo"}
    ap = table.set_index("measure").loc["AP"]
    expected = sp.ttest_rel(a, b)
    assert ap["diff"] == pytest.approx(np.mean(np.subtract(a, b)))
    assert ap["p"] == pytest.approx(expected.pvalue)
    # every measure has the same differences, so Holm multiplies the smallest p by 7
    assert ap["p_holm"] == pytest.approx(min(1.0, expected.pvalue * len(MEASURES)))
    assert ap["basis"] == "paired t over seeds"
    assert ap["verdict"] == ("higher" if ap["p_holm"] < 0.05 else "within noise")


def _instances(scores: dict[tuple[int, str], list[float]]) -> pd.DataFrame:
    tables = {
        key: pd.DataFrame(
            {
                "id": [f"i{n}" for n in range(len(v))],
                "rougeL": v,
                "exact_match": v,
                "label_accuracy": v,
            }
        )
        for key, v in scores.items()
    }
    return instance_scores({"original_prompt": tables}, ["rougeL", "exact_match", "label_accuracy"])


def _run(shift: float, seed_noise: int) -> pd.DataFrame:
    rng = np.random.default_rng(seed_noise)
    cells = {}
    for stage in range(3):
        for task in [*SEQ, *UNSEEN]:
            cells[(stage, task)] = list(
                (rng.random(40) < 0.5 + shift * (stage > 0)).astype(float) * 100
            )
    return _instances(cells)


def test_bootstrap_of_the_observed_instances_centres_on_the_summary_metric():
    scores = _run(0.1, 1)
    ids = common_ids([scores], [*SEQ, *UNSEEN])
    samples = bootstrap_measures(scores, SEQ, UNSEEN, "rougeL", ids, resamples=400, seed=0)
    cells = scores.groupby(["stage", "task"])["rougeL"].mean()
    R = np.array([[cells[(i, t)] for t in SEQ] for i in range(3)])
    observed = continual_metrics(R)
    assert np.mean(samples["AP"]) == pytest.approx(observed["AP"][0], abs=2.0)
    assert np.mean(samples["plasticity"]) == pytest.approx(observed["plasticity"][0], abs=2.0)
    assert np.mean(samples["unseen_mean"]) == pytest.approx(cells[(2, "u")], abs=2.0)


def test_paired_bootstrap_of_a_run_against_itself_is_exactly_zero():
    scores = _run(0.1, 1)
    layouts = {
        name: {"name": "s", "sequence": SEQ, "unseen": UNSEEN, "seed": 0, **config}
        for name, config in [
            ("base", {"method": "inclora", "strategy": "original"}),
            ("same", {"method": "inclora", "strategy": "sapo"}),
        ]
    }
    table = compare_instances({"base": scores, "same": scores}, layouts, BASELINE, resamples=200)
    assert set(table["run"]) == {"same"}
    finite = table.dropna(subset=["diff"])
    assert (finite["diff"] == 0).all() and (finite["ci_low"] == 0).all()
    assert (finite["verdict"] == "within noise").all()


def test_a_clear_difference_is_called_and_a_mismatch_of_items_refused():
    layouts = {
        "base": {"name": "s", "sequence": SEQ, "unseen": UNSEEN, "seed": 0, **BASELINE},
        "better": {
            "name": "s", "sequence": SEQ, "unseen": UNSEEN, "seed": 0,
            "method": "replay", "strategy": "original",
        },
    }  # fmt: skip
    base, better = _run(0.0, 1), _run(0.0, 1)
    better.loc[better["stage"] > 0, ["rougeL", "label_accuracy"]] = 100.0
    table = compare_instances({"base": base, "better": better}, layouts, BASELINE, resamples=300)
    ap = table[(table["metric"] == "rougeL") & (table["measure"] == "AP")].iloc[0]
    assert ap["diff"] > 30 and ap["ci_low"] > 0 and ap["verdict"] == "higher"
    with pytest.raises(ValueError, match="same instances"):
        compare_instances(
            {"base": base, "better": better[better["id"] != "i3"]}, layouts, BASELINE, 100
        )


def test_one_seed_takes_its_verdict_from_the_bootstrap():
    summary = _summary({("inclora", "original"): [50.0], ("inclora", "sapo"): [60.0]})
    by_seed = pd.DataFrame(
        [
            {"sequence": "s", "method": "inclora", "strategy": "sapo", "seed": 0,
             "protocol": "original_prompt", "metric": "label_accuracy", "measure": m,
             "ci_low": 2.0, "ci_high": 18.0, "p_holm": 0.01, "verdict": "higher"}
            for m in MEASURES
        ]
    )  # fmt: skip
    table = compare_seeds(summary, BASELINE, by_seed=by_seed).set_index("measure")
    assert table.loc["AP", "n"] == 1 and table.loc["AP", "verdict"] == "higher"
    assert table.loc["AP", "basis"].startswith("paired bootstrap")


def test_equal_differences_in_every_seed_need_every_seeds_bootstrap():
    # +2 in both seeds: the t-test is undefined, so the per-seed bootstraps decide
    summary = _summary({("inclora", "original"): [50.0, 40.0], ("inclora", "sapo"): [52.0, 42.0]})
    rows = []
    for seed, verdict in ((0, "higher"), (1, "within noise")):
        for m in MEASURES:
            rows.append(
                {"sequence": "s", "method": "inclora", "strategy": "sapo", "seed": seed,
                 "protocol": "original_prompt", "metric": "label_accuracy", "measure": m,
                 "ci_low": -1.0 + seed, "ci_high": 5.0 + seed, "p_holm": 0.01 + seed,
                 "verdict": verdict}
            )  # fmt: skip
    table = compare_seeds(summary, BASELINE, by_seed=pd.DataFrame(rows)).set_index("measure")
    ap = table.loc["AP"]
    assert ap["n"] == 2 and ap["diff"] == 2.0 and np.isnan(ap["p"])
    assert ap["verdict"] == "within noise"  # seed 1's bootstrap does not agree
    assert (ap["ci_low"], ap["ci_high"], ap["p_holm"]) == (-1.0, 6.0, 1.01)
    assert ap["basis"] == "paired bootstrap over instances (each of 2 seeds)"
    rows = [dict(r, verdict="higher") for r in rows]
    table = compare_seeds(summary, BASELINE, by_seed=pd.DataFrame(rows)).set_index("measure")
    assert table.loc["AP", "verdict"] == "higher"


# --- what each comparison could have detected (mde) --------------------------------------------


def test_the_t_test_states_its_mde_at_the_holm_alpha():
    a, b = [55.0, 58.0, 60.0], [50.0, 51.0, 53.0]
    summary = _summary({("inclora", "original"): b, ("inclora", "sapo"): a})
    ap = compare_seeds(summary, BASELINE).set_index("measure").loc["AP"]
    sd = np.std(np.subtract(a, b), ddof=1)
    # one configuration × 7 measures in the protocol × metric family: α/m = 0.05/7
    assert ap["mde"] == pytest.approx(mde_t(sd, 3, 0.05 / len(MEASURES)))
    assert np.isfinite(ap["mde"]) and ap["mde"] > abs(ap["diff"])  # within noise, and why
    assert list(compare_seeds(summary, BASELINE).columns)[-2:] == ["verdict", "mde"]


def test_a_larger_holm_family_needs_a_larger_difference():
    a, b = [55.0, 58.0, 60.0], [50.0, 51.0, 53.0]
    one = _summary({("inclora", "original"): b, ("inclora", "sapo"): a})
    two = _summary({("inclora", "original"): b, ("inclora", "sapo"): a, ("replay", "sapo"): a})
    small = compare_seeds(one, BASELINE).set_index(["method", "measure"]).loc[("inclora", "AP")]
    large = compare_seeds(two, BASELINE).set_index(["method", "measure"]).loc[("inclora", "AP")]
    assert small["sd"] == large["sd"] and large["mde"] > small["mde"]
    sd = np.std(np.subtract(a, b), ddof=1)
    assert large["mde"] == pytest.approx(mde_t(sd, 3, 0.05 / (2 * len(MEASURES))))


def test_no_test_no_mde():
    # one seed, and the same difference in both seeds: no t-test, so no power to state
    for values in ([50.0], [50.0, 40.0]):
        summary = _summary(
            {("inclora", "original"): values, ("inclora", "sapo"): [v + 2 for v in values]}
        )
        table = compare_seeds(summary, BASELINE)
        assert table["p"].isna().all() and table["mde"].isna().all()


def test_the_bootstrap_states_its_mde_from_the_bootstrap_se():
    layouts = {
        "base": {"name": "s", "sequence": SEQ, "unseen": UNSEEN, "seed": 0, **BASELINE},
        "other": {
            "name": "s", "sequence": SEQ, "unseen": UNSEEN, "seed": 0,
            "method": "replay", "strategy": "original",
        },
    }  # fmt: skip
    base, other = _run(0.0, 1), _run(0.0, 2)
    table = compare_instances({"base": base, "other": other}, layouts, BASELINE, resamples=400)
    assert list(table.columns)[-2:] == ["verdict", "mde"]
    tested = table["p"].notna()
    assert tested.any() and table.loc[tested, "mde"].gt(0).all()
    assert table.loc[~tested, "mde"].isna().all()
    # the percentile interval spans about 2·1.96 SE, and the mde is (z_{1−α'/2} + z_0.8)·SE
    # with α' = 0.05 over the family's tests (protocol × metric × seed)
    ap = table[(table["metric"] == "rougeL") & (table["measure"] == "AP")].iloc[0]
    m = int(table.loc[tested & (table["metric"] == "rougeL")].shape[0])
    se = (ap["ci_high"] - ap["ci_low"]) / (2 * 1.959964)
    assert ap["mde"] == pytest.approx(mde_z(se, 0.05 / m), rel=0.15)
    # a run against itself: the resamples do not vary, nothing to state
    same = compare_instances({"base": base, "other": base}, layouts, BASELINE, resamples=100)
    assert same["mde"].isna().all()


def test_the_bootstrap_fallback_takes_the_largest_seeds_mde():
    summary = _summary({("inclora", "original"): [50.0, 40.0], ("inclora", "sapo"): [52.0, 42.0]})
    rows = [
        {"sequence": "s", "method": "inclora", "strategy": "sapo", "seed": seed,
         "protocol": "original_prompt", "metric": "label_accuracy", "measure": m,
         "ci_low": -1.0, "ci_high": 5.0, "p_holm": 0.5, "verdict": "within noise", "mde": mde}
        for seed, mde in ((0, 7.5), (1, 9.25))
        for m in MEASURES
    ]  # fmt: skip
    ap = compare_seeds(summary, BASELINE, by_seed=pd.DataFrame(rows)).set_index("measure")
    assert ap.loc["AP", "mde"] == 9.25 and ap.loc["AP", "verdict"] == "within noise"


def test_within_noise_reads_with_what_it_could_detect():
    row = {"verdict": "within noise", "mde": 12.345}
    assert readable_verdict(row) == "within noise (could detect ≥ 12.3)"
    assert readable_verdict({"verdict": "within noise", "mde": float("nan")}) == "within noise"
    assert readable_verdict({"verdict": "higher", "mde": 3.0}) == "higher"
    assert readable_verdict({"verdict": "n/a"}) == "n/a"
    a, b = [55.0, 58.0, 60.0], [50.0, 51.0, 53.0]
    table = compare_seeds(_summary({("inclora", "original"): b, ("inclora", "sapo"): a}), BASELINE)
    text = format_comparisons(table, "label_accuracy")
    mde = table.set_index("measure").loc["AP", "mde"]
    assert f"within noise (could detect ≥ {mde:.1f})" in text
    assert set(table["verdict"]) <= {"higher", "lower", "within noise", "n/a"}  # stored as before
