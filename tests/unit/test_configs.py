"""Every bundled config is valid against the schema (merged over config/config.yaml, as
Snakemake merges --configfile), so a user's first run never stops on a shipped file."""

from __future__ import annotations

import copy

import pytest
import yaml
from snakemake.utils import validate

from tests.helpers import REPO


def merged(*names: str) -> dict:
    def merge(base: dict, over: dict) -> dict:
        out = copy.deepcopy(base)
        for key, value in over.items():
            if isinstance(value, dict) and isinstance(out.get(key), dict):
                out[key] = merge(out[key], value)
            else:
                out[key] = value
        return out

    config: dict = {}
    for name in names:
        config = merge(config, yaml.safe_load((REPO / "config" / name).read_text()))
    return config


@pytest.mark.parametrize(
    "extra", [None, "matrix.yaml", "study.yaml", "baselines.yaml", "paper_ni_seq_c1.yaml"]
)
def test_bundled_configs_validate(extra):
    config = merged("config.yaml", *([extra] if extra else []))
    validate(config, str(REPO / "config/schema.yaml"))
    assert config["prompt"]["chat_template_kwargs"] == {"enable_thinking": False}


def test_paper_config_follows_the_reference():
    config = merged("config.yaml", "paper_ni_seq_c1.yaml")
    validate(config, str(REPO / "config/schema.yaml"))
    assert config["sapo"]["criterion"] == "batch_mean"
    assert config["training"]["global_batch_size"] == 64
    assert config["training"].get("grad_accum") is None
    assert config["scoring"]["reference_batch_size"] == 8
    # the reference's 20 paraphrases to train with, after the held-out ones are taken
    assert config["prompts"]["candidates"] - config["evaluation"]["heldout_prompts"] == 20


def test_the_baselines_config_plans_every_family_with_and_without_sapo_over_two_seeds():
    from promptcl.dag.plan import WorkflowPlan

    config = merged("config.yaml", "baselines.yaml")
    validate(config, str(REPO / "config/schema.yaml"))
    plan = WorkflowPlan.from_config(config, REPO)
    combos = {(r.method, r.strategy, r.seed) for r in plan.runs.values()}
    methods = ["inclora", "olora", "replay", "ewc", "lwf"]
    assert combos == {(m, s, k) for m in methods for s in ("original", "sapo") for k in (0, 1)}
    baseline = config["comparison"]["baseline"]
    assert (baseline["method"], baseline["strategy"], 0) in combos


def test_the_paper_config_runs_the_baselines_with_three_seeds_and_the_reference_runs():
    config = merged("config.yaml", "paper_ni_seq_c1.yaml")
    runs = config["runs"]
    assert set(runs["methods"]) >= {"inclora", "olora", "replay", "ewc", "lwf"}
    assert runs["seeds"] == [0, 1, 2]
    extra = {(e["method"], e["seed"]) for e in runs["extra"]}
    assert extra == {(m, s) for m in ("single", "multitask") for s in (0, 1, 2)}
