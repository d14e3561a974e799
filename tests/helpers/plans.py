"""The workflow plan of the default config with a few runs, built without Snakemake."""

from __future__ import annotations

import yaml
from snakemake.utils import validate

from promptcl.dag.plan import WorkflowPlan
from tests.helpers import REPO


def plan_of(**overrides) -> WorkflowPlan:
    config = yaml.safe_load((REPO / "config/config.yaml").read_text())
    config["runs"] = {
        "sequences": ["demo"],
        "methods": ["inclora", "olora", "seqlora"],
        "prompt_strategies": ["original", "sapo"],
        "seeds": [0],
    }
    config.update(overrides)
    validate(config, str(REPO / "config/schema.yaml"))
    return WorkflowPlan.from_config(config, REPO)
