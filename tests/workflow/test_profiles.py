"""The Snakemake profiles name only rules of the workflow and ask SLURM for what jobs use."""

from __future__ import annotations

import yaml

from tests.helpers import REPO
from tests.helpers.workflow import (
    snakemake,
)


def _profile(name: str) -> dict:
    return yaml.safe_load((REPO / f"config/profiles/{name}/config.yaml").read_text())


def _workflow_rules() -> set[str]:
    import re

    text = "\n".join(p.read_text() for p in (REPO / "rules").glob("*.smk"))
    return set(re.findall(r"^(?:rule|checkpoint) (\w+):", text, flags=re.M)) | {"all"}


def test_profiles_only_name_rules_of_the_workflow():
    rules = _workflow_rules()
    for name in ("slurm", "local"):
        profile = _profile(name)
        named = set(profile.get("set-resources", {})) | set(profile.get("set-threads", {}))
        assert named <= rules, f"{name} profile names unknown rules {named - rules}"


def test_slurm_profile_gpu_rules_scale_with_attempt_and_threads_equal_cpus():
    profile = _profile("slurm")
    resources, threads = profile["set-resources"], profile["set-threads"]
    gpu_rules = {r for r, res in resources.items() if res.get("gpu")}
    model_rules = {"evaluate_base", "score_prompts_base", "score_prompts", "train_stage"}
    assert model_rules | {"measure_candidates"} <= gpu_rules
    assert "predict_stage" in gpu_rules and "prepare_model" not in gpu_rules
    for rule, res in resources.items():
        assert "attempt" in str(res["runtime"]) and "attempt" in str(res["mem_mb"]), rule
        cpus = res["gpu"] * res["cpus_per_gpu"] if rule in gpu_rules else res["cpus_per_task"]
        assert threads[rule] == cpus, f"{rule}: threads must equal the CPUs requested"
    assert "--signal=TERM@" in resources["train_stage"]["slurm_extra"]
    local_rules = {"prepare_tasks", "aggregate_run", "summarize"}
    assert not local_rules & set(resources), "local rules ask SLURM for nothing"
    for rule in local_rules:
        smk = next(p for p in (REPO / "rules").glob("*.smk") if f"rule {rule}:" in p.read_text())
        body = smk.read_text().split(f"rule {rule}:")[1].split("\nrule ")[0]
        assert "localrule: True" in body, rule


def test_local_profile_runs_the_finished_workflow(finished):
    proc = snakemake(
        finished,
        "--profile",
        str(REPO / "config/profiles/local"),
        "--configfile",
        str(finished / "config.yaml"),
        "--dry-run",
    )
    assert "Nothing to be done" in proc.stdout + proc.stderr
