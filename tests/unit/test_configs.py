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


@pytest.mark.parametrize("extra", [None, "matrix.yaml", "study.yaml", "paper_ni_seq_c1.yaml"])
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
