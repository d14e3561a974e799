rule prepare_tasks:
    """One normalised parquet per split of a task (capped), plus the task's metadata."""
    input:
        task_sources_of,
    output:
        train=f"{RESULTS}/tasks/{{task}}/train.parquet",
        dev=f"{RESULTS}/tasks/{{task}}/dev.parquet",
        test=f"{RESULTS}/tasks/{{task}}/test.parquet",
        meta=f"{RESULTS}/tasks/{{task}}/task.json",
    log:
        f"{RESULTS}/logs/tasks/{{task}}.log",
    localrule: True
    conda:
        "../environment.yml"
    params:
        sources=config["data"]["sources"],
        caps=config["data"]["caps"],
        seed=config["data"]["seed"],
    script:
        "../workflow_scripts/prepare_tasks.py"
