"""Shared fixtures (a tiny random Llama with the embedded model's real tokenizer) and the test
tiers: tests/unit is the fast tier; tests/workflow runs whole Snakemake DAGs (marked slow);
tests/cluster starts a local SLURM (marked slurm and slow). ``pytest -m "not slow"`` runs the
fast tier; ``make test`` (CI) runs everything."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.helpers.models import build_tiny_model
from tests.helpers.workflow import snakemake, tiny_config, write_config

TIERS = {"workflow": ("slow",), "cluster": ("slow", "slurm")}


def pytest_collection_modifyitems(config, items) -> None:
    for item in items:
        tier = Path(str(item.path)).parent.name
        for marker in TIERS.get(tier, ()):
            item.add_marker(getattr(pytest.mark, marker))


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory) -> Path:
    return build_tiny_model(tmp_path_factory.mktemp("tiny_model"))


@pytest.fixture(scope="session")
def tiny_tokenizer(tiny_model_dir):
    from promptcl.model.modeling import load_tokenizer

    return load_tokenizer(tiny_model_dir)


@pytest.fixture(scope="session")
def finished(tiny_model_dir, tmp_path_factory) -> Path:
    """The tiny-model workflow run locally, computed once: the workflow tests read it and the
    SLURM tests compare their run of the same config with it."""
    work = tmp_path_factory.mktemp("workflow")
    cfg = write_config(work / "config.yaml", tiny_config(tiny_model_dir))
    snakemake(work, "--configfile", str(cfg))
    return work
