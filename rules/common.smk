# Config validation, the PLAN object (runs, tasks, input functions, params) and wildcard
# constraints. The logic lives in workflow_scripts/promptcl/dag/plan.py (torch-free, unit-tested).
import sys
from pathlib import Path

from snakemake.exceptions import WorkflowError
from snakemake.utils import min_version, validate

min_version("9.14.1")

WORKFLOW_DIR = Path(workflow.basedir).resolve()
sys.path.insert(0, str(WORKFLOW_DIR / "workflow_scripts"))

from promptcl.store import paths  # noqa: E402
from promptcl.dag.plan import WorkflowPlan  # noqa: E402
from promptcl.errors import ConfigError  # noqa: E402

validate(config, schema="../config/schema.yaml")

try:
    PLAN = WorkflowPlan.from_config(config, WORKFLOW_DIR)
except ConfigError as err:
    raise WorkflowError(f"Invalid configuration: {err}") from None


wildcard_constraints:
    run=paths.alternatives(PLAN.all_runs),
    task=paths.alternatives(PLAN.tasks),
    branch=paths.alternatives(PLAN.branches),
    stage=r"[1-9][0-9]*",
    figure="matrix|forgetting|loss",
    metric=paths.alternatives(PLAN.metrics),
