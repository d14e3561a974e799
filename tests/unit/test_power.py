"""How much data a comparison needs: per-item noise measured on instance scores, turned into
items per task and seeds."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest

from promptcl.analysis import stats
from promptcl.analysis.power import (
    item_sd,
    items_needed,
    paired_item_sd,
    power_table,
    seeds_needed,
)


def scores(values: dict[str, list[float]], stage: int = 2, metric: str = "rougeL") -> pd.DataFrame:
    rows = [
        {"protocol": "original_prompt", "stage": stage, "task": task, "id": str(i), metric: v}
        for task, vals in values.items()
        for i, v in enumerate(vals)
    ]
    return pd.DataFrame(rows)


def test_items_needed_is_the_normal_sample_size_over_the_tasks():
    # z_{0.975} + z_{0.8} = 2.8016; (2.8016 * 40 / 5)^2 = 502.3 items over 2 tasks -> 252
    assert items_needed(40.0, tasks=2, delta=5.0) == 252
    assert items_needed(40.0, tasks=1, delta=2.0) == math.ceil((2.8016 * 20) ** 2)
    assert math.isnan(items_needed(0.0, tasks=2, delta=5.0))


def test_the_items_found_give_the_stated_power_in_simulation():
    """Simulated paired per-item differences with the SD used: a z-test of the AP difference on
    the computed number of items rejects in about 80% of draws."""
    rng = np.random.default_rng(0)
    sd, tasks, delta = 30.0, 3, 5.0
    n = int(items_needed(sd, tasks, delta))
    diffs = rng.normal(delta, sd, size=(3000, tasks, n)).mean(axis=(1, 2))
    se = sd / math.sqrt(tasks * n)
    power = np.mean(np.abs(diffs / se) > 1.959964)
    assert power == pytest.approx(0.80, abs=0.03)


def test_seeds_needed_is_the_fewest_the_t_test_detects_with():
    n = seeds_needed(3.0, delta=5.0)
    assert stats.mde_t(3.0, int(n), 0.05) <= 5.0 < stats.mde_t(3.0, int(n) - 1, 0.05)
    assert math.isnan(seeds_needed(float("nan"), 5.0))


def test_per_item_sds_pool_the_tasks_variances():
    a = scores({"t1": [0, 100, 0, 100], "t2": [50, 50, 50, 50]})
    b = scores({"t1": [0, 0, 0, 0], "t2": [50, 50, 50, 100]})
    var_t1 = np.var([0, 100, 0, 100], ddof=1)
    assert item_sd(a, "rougeL", 2) == pytest.approx(math.sqrt(var_t1 / 2))
    diff_var = (np.var([0, 100, 0, 100], ddof=1) + np.var([0, 0, 0, -50], ddof=1)) / 2
    assert paired_item_sd(a, b, "rougeL", 2) == pytest.approx(math.sqrt(diff_var))
    assert math.isnan(paired_item_sd(a, b, "rougeL", 1))


def test_the_power_table_pairs_items_and_seeds():
    base = scores({"t1": [0, 100, 0, 100], "t2": [100, 0, 100, 0]})
    other = scores({"t1": [100, 100, 0, 100], "t2": [100, 0, 0, 0]})
    summary = pd.DataFrame(
        {
            "run": ["b0", "b1", "o0", "o1"],
            "protocol": "original_prompt",
            "metric": "rougeL",
            "sequence": "s",
            "method": ["inclora", "inclora", "ewc", "ewc"],
            "strategy": "original",
            "seed": [0, 1, 0, 1],
            "AP": [50.0, 52.0, 51.0, 57.0],
        }
    )
    table = power_table({"b0": base, "o0": other}, summary, "b0", ["t1", "t2"])
    assert list(table["delta"]) == [2.0, 5.0]  # points, for a 0-100 metric
    two, five = table.iloc[0], table.iloc[1]
    assert two["run"] == "o0" and two["metric"] == "rougeL"
    assert two["seed_sd"] == pytest.approx(np.std([1.0, 5.0], ddof=1))
    assert two["items_per_task"] == items_needed(two["paired_item_sd"], 2, 2.0)
    assert five["seeds"] == seeds_needed(five["seed_sd"], 5.0)
    assert two["items_per_task"] > five["items_per_task"]
