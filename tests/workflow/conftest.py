"""The tiny-model workflow run with a study and the report, which several workflow test modules
read (computed once); the plain run, ``finished``, is in tests/conftest.py."""

from __future__ import annotations

from pathlib import Path

import pytest

from promptcl.methods import METHODS
from tests.helpers.workflow import (
    SEQUENCE,
    STRATEGIES,
    UNSEEN,
    methods_config,
    snakemake,
    tiny_config,
    write_config,
)


@pytest.fixture(scope="session")
def studied(tiny_model_dir, tmp_path_factory) -> Path:
    """Two runs (original, sapo) and a prompt-impact study of the tiny sequence's two tasks in
    one results/ folder, every state evaluated by generation and by likelihood (the study's
    outcome the gold log-likelihood), then the report: every figure the workflow makes."""
    work = tmp_path_factory.mktemp("studied")
    config = tiny_config(tiny_model_dir)
    config["runs"]["prompt_strategies"] = ["original", "sapo"]
    config["evaluation"] = {"outcomes": ["generation", "likelihood"]}
    config["study"] = {
        "pairs": [SEQUENCE],
        "unseen": UNSEEN,
        "instances": 4,
        "bootstrap": 200,
        "metric": "gold_logprob",
    }
    cfg = write_config(work / "config.yaml", config)
    snakemake(work, "--configfile", str(cfg))
    snakemake(work, "--configfile", str(cfg), "--report", str(work / "report.html"))
    return work


@pytest.fixture(scope="session")
def every_pair(tiny_model_dir, tmp_path_factory) -> Path:
    """Every method × every prompt strategy, one seed, with one held-out evaluation prompt per
    task, up to the summary and the comparisons (the baselines' and the methods' tests)."""
    work = tmp_path_factory.mktemp("every_pair")
    config = methods_config(tiny_model_dir, METHODS, STRATEGIES)
    config["evaluation"] = {"heldout_prompts": 1}
    cfg = write_config(work / "config.yaml", config)
    # targets go before --configfile (which takes every following word as a config file)
    snakemake(work, "results/summary.txt", "results/comparisons.parquet", "--configfile", str(cfg))
    return work
