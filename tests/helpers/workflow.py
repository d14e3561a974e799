"""Running the workflow in tests: Snakemake in a subprocess on a tiny-model config."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import yaml

from . import REPO

RUN = "tiny-inclora-original-s0"
SEQUENCE = ["task195", "task363"]
UNSEEN = ["task875_emotion_classification"]


def snakemake(workdir: Path, *args: str, check: bool = True) -> subprocess.CompletedProcess:
    cmd = [sys.executable, "-m", "snakemake", "-s", str(REPO / "Snakefile"), "-d", str(workdir)]
    proc = subprocess.run(
        [*cmd, "--cores", "2", *args], capture_output=True, text=True, timeout=1800
    )
    if check and proc.returncode != 0:
        raise AssertionError(f"snakemake failed:\n{proc.stdout[-4000:]}\n{proc.stderr[-4000:]}")
    return proc


def tiny_config(model_dir: Path, **overrides) -> dict:
    config = {
        "model": {"source": "local", "path": str(model_dir), "name": "tiny", "precision": "fp32"},
        "data": {"caps": {"train": {"n": 16}, "dev": {"n": 4}, "test": {"n": 8}}},
        "sequences": {"tiny": {"tasks": SEQUENCE, "unseen": UNSEEN}},
        "training": {"epochs": 1, "batch_size": 4, "save_steps": 2, "learning_rate": 0.01},
        "generation": {"max_new_tokens": 4, "batch_size": 8},
        "prompt": {"max_input_tokens": 128},
        "runs": {"sequences": ["tiny"], "prompt_strategies": ["original"]},
        "prompts": {"backend": "file", "candidates": 4, "min_valid": 2},
    }
    for key, value in overrides.items():
        config[key] = value
    return config


def write_config(path: Path, config: dict) -> Path:
    path.write_text(yaml.safe_dump(config))
    return path


def planned_jobs(output: str) -> dict[str, int]:
    """Rule -> job count from the "Job stats" table of a dry run."""
    lines = output[output.index("Job stats:") :].splitlines()[3:]
    jobs = {}
    for line in lines:
        parts = line.split()
        if len(parts) != 2 or not parts[1].isdigit():
            break
        jobs[parts[0]] = int(parts[1])
    return jobs


def fails_before_jobs(tmp_path: Path, config: dict, expected: str) -> None:
    """Snakemake stops on ``config`` with ``expected`` in its output, and no job ran."""
    cfg = write_config(tmp_path / "config.yaml", config)
    proc = snakemake(tmp_path, "--configfile", str(cfg), check=False)
    out = proc.stdout + proc.stderr
    assert proc.returncode != 0
    assert expected in out, out[-3000:]
    assert not (tmp_path / "results").exists(), "no job may run on an invalid config"


#: the prompt strategies of the every-method × every-strategy DAG (``every_pair``)
STRATEGIES = ["original", "sapo", "paft", "fixed:1"]


def methods_config(model_dir: Path, methods, strategies, seeds=(0,)) -> dict:
    """Sequence ``b`` (the tiny sequence, unseen task1343) with every section the methods read,
    on small caps: the config of the baselines' and the methods' DAG tests."""
    config = tiny_config(model_dir, sequences={"b": {"tasks": SEQUENCE, "unseen": ["task1343"]}})
    config["data"] = {"caps": {"train": {"n": 8}, "dev": {"n": 4}, "test": {"n": 6}}}
    config["runs"] = {
        "sequences": ["b"],
        "methods": list(methods),
        "prompt_strategies": list(strategies),
        "seeds": list(seeds),
    }
    config["scoring"] = {"instances": 4, "batch_size": 8}
    config["replay"] = {"examples": 3}
    config["ewc"] = {"lambda": 100.0, "fisher_examples": 4}
    config["agem"] = {"memory_per_task": 3, "reference_examples": 2}
    config["ilora"] = {"buffer_size": 4}
    config["comparison"] = {"resamples": 200}
    return config


def pair_run(method: str, strategy: str, seed: int = 0) -> str:
    """The run folder of ``method`` × ``strategy`` in a :func:`methods_config` DAG."""
    return f"b-{method}-{strategy.replace(':', '_')}-s{seed}"
