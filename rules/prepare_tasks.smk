rule prepare_tasks:
    """One normalised parquet per split of a task (capped), plus the task's metadata."""
    input:
        PLAN.task_source_files,
    output:
        train=paths.fill(paths.TASK_SPLIT, task="{task}", split="train"),
        dev=paths.fill(paths.TASK_SPLIT, task="{task}", split="dev"),
        test=paths.fill(paths.TASK_SPLIT, task="{task}", split="test"),
        meta=paths.TASK_META,
    log:
        paths.log(paths.JOB_PREPARE_TASKS),
    localrule: True
    conda:
        "../environment.yml"
    params:
        sources=config["data"]["sources"],
        caps=config["data"]["caps"],
        seed=config["data"]["seed"],
    script:
        "../workflow_scripts/prepare_tasks.py"
