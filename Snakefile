# promptcl: training prompts as a first-class, state-adaptive variable in continual LoRA fine-tuning.
# Wiring only: every stage lives in rules/<stage>.smk, its script in workflow_scripts/.

from pathlib import Path


configfile: Path(workflow.basedir) / "config" / "config.yaml"


report: "report/workflow.rst"


include: "rules/common.smk"
include: "rules/prepare_model.smk"
include: "rules/prepare_tasks.smk"
include: "rules/paraphrase.smk"
include: "rules/score.smk"
include: "rules/evaluate.smk"
include: "rules/train.smk"
include: "rules/aggregate.smk"
include: "rules/figures.smk"
include: "rules/study.smk"


rule all:
    default_target: True
    input:
        PLAN.all_targets,
