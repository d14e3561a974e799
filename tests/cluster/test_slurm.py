"""The cluster path on a real SLURM: the project's profile, GPU requests, retries that resume.

A single-node SLURM (munge, slurmctld, slurmd, slurmdbd + MariaDB, two fake GPUs) is installed
and started by scripts/local_slurm/start_local_slurm.sh, which needs root. The node advertises a
GPU-node shape (8 CPUs, 128 GB) so config/profiles/slurm schedules unchanged; the test profile is
that file with only the partition, the account and the status-polling timings replaced.
Deselect with ``-m "not slurm"`` on a machine where you cannot be root.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest
import torch
import yaml
from safetensors.torch import load_file

from tests.helpers import REPO
from tests.helpers.workflow import planned_jobs, snakemake, tiny_config, write_config

pytestmark = pytest.mark.slurm

SCRIPTS = REPO / "scripts" / "local_slurm"
NODE_SHAPE = {"SLURM_LOCAL_CPUS": "8", "SLURM_LOCAL_MEM_MB": "131072", "SLURM_LOCAL_GPUS": "2"}
RUN = "tiny-inclora-original-s0"
# rules that run on the submit host (localrule: True; the file paraphrase backend)
LOCAL_RULES = {"prepare_tasks", "paraphrase_prompts", "aggregate_run", "summarize", "all"}
LOCAL_RULES |= {"plot_run", "plot_candidates", "plot_runs", "plot_baseline", "compare_runs"}
LOCAL_RULES |= {"study_outcomes", "analyze_study"}
GPU_RULES = {"evaluate_base", "train_stage", "predict_stage", "score_prompts_base", "score_prompts"}


ARRAY_RULES = (
    "evaluate_base,likelihood_base,predict_stage,likelihood_stage,score_prompts_base,score_prompts"
)


def _cluster_up() -> bool:
    try:
        ping = subprocess.run(["scontrol", "ping"], capture_output=True, text=True, timeout=20)
    except (FileNotFoundError, subprocess.TimeoutExpired):
        return False
    return ping.returncode == 0 and "UP" in ping.stdout


@pytest.fixture(scope="session")
def slurm_cluster():
    """Start the local SLURM (stopped again at the end only if this session started it)."""
    if os.geteuid() != 0:
        pytest.fail(
            "the SLURM tests install and start a local SLURM and need root "
            "(scripts/local_slurm/start_local_slurm.sh); deselect them with -m 'not slurm'"
        )
    already = _cluster_up()
    proc = subprocess.run(
        ["bash", str(SCRIPTS / "start_local_slurm.sh")],
        env={**os.environ, **NODE_SHAPE},
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert proc.returncode == 0, f"starting SLURM failed:\n{proc.stdout}\n{proc.stderr}"
    assert "SLURM ready" in proc.stdout
    yield
    if not already:
        subprocess.run(["bash", str(SCRIPTS / "stop_local_slurm.sh")], timeout=120, check=False)


def slurm_test_profile(tmp: Path, train_timing: dict | None = None) -> Path:
    """config/profiles/slurm with only partition, account and timings replaced (polling; for
    the time-limit test also train_stage's runtime and signal lead time)."""
    profile = yaml.safe_load((REPO / "config/profiles/slurm/config.yaml").read_text())
    profile["default-resources"].update(slurm_partition="debug", slurm_account="testacct")
    # the profile's commented array option, switched on as written (the tiny DAG stays far
    # below `jobs`, where plugin 2.8.0's array mode can hang)
    profile["slurm-array-jobs"] = ARRAY_RULES
    profile.update({"slurm-init-seconds-before-status-checks": 2, "latency-wait": 5})
    if train_timing:
        assert set(train_timing) <= {"runtime", "slurm_extra"}
        profile["set-resources"]["train_stage"].update(train_timing)
    folder = tmp / "profile"
    folder.mkdir()
    (folder / "config.yaml").write_text(yaml.safe_dump(profile))
    return folder


def run_on_slurm(work: Path, profile: Path, *args: str) -> subprocess.CompletedProcess:
    """Snakemake through the SLURM executor; SIGINT on timeout so it scancels its jobs."""
    cmd = [
        *("timeout", "-s", "INT", "-k", "60", "1500"),
        *(sys.executable, "-m", "snakemake", "-s", str(REPO / "Snakefile"), "-d", str(work)),
        *("--profile", str(profile), *args),
    ]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=1700)
    (work / "snakemake_slurm.log").write_text(proc.stdout + proc.stderr)
    assert proc.returncode == 0, f"SLURM run failed:\n{proc.stdout[-4000:]}\n{proc.stderr[-6000:]}"
    return proc


def sacct_jobs(output: str) -> pd.DataFrame:
    """The run's allocations from accounting (the plugin names every job after the run id)."""
    run_id = re.search(r"SLURM run ID: (\S+)", output).group(1)
    for _ in range(30):  # slurmdbd records a finished job's TRES a few seconds late
        proc = subprocess.run(
            ["sacct", "-X", "-n", "-P", "--name", run_id, "-S", "now-1days"]
            + ["-o", "JobID,State,Comment,ReqTRES,AllocTRES,Timelimit"],
            capture_output=True,
            text=True,
            check=True,
        )
        rows = [line.split("|") for line in proc.stdout.splitlines() if line.strip()]
        columns = ["job", "state", "comment", "req", "alloc", "timelimit"]
        table = pd.DataFrame(rows, columns=columns)
        if len(table) and (table["req"] != "").all() and not table["state"].isin(["RUNNING"]).any():
            break
        time.sleep(1)
    # an array task is <array job id>_<index>: one sbatch call per array job id
    ids = table["job"].str.extract(r"^(\d+)(?:_(\d+))?$")
    table["submission"] = ids[0].astype(int)
    table["array_index"] = pd.to_numeric(ids[1]).astype("Int64")
    table["rule"] = table["comment"].str.extract(r"^rule_(.+?)(?:_wildcards_.*)?$")[0]
    return table.sort_values(["submission", "array_index"]).reset_index(drop=True)


@pytest.fixture(scope="module")
def pipeline(slurm_cluster, finished, tmp_path_factory) -> dict:
    """The local tiny-model run's config (``finished``) through SLURM."""
    root = tmp_path_factory.mktemp("slurm_pipeline")
    work = root / "slurm"
    config = str(finished / "config.yaml")
    report = root / "efficiency"
    proc = run_on_slurm(
        work,
        slurm_test_profile(root),
        *("--configfile", config),
        *("--slurm-efficiency-report", "--slurm-efficiency-report-path", str(report)),
    )
    output = proc.stdout + proc.stderr
    return {
        "work": work,
        "local": finished,
        "output": output,
        "jobs": sacct_jobs(output),
        "report": report,
    }


def test_every_cluster_job_went_through_sbatch(pipeline):
    planned = planned_jobs(pipeline["output"])
    planned.pop("total")
    expected = {rule: n for rule, n in planned.items() if rule not in LOCAL_RULES}
    jobs = pipeline["jobs"]
    assert jobs["rule"].value_counts().to_dict() == expected
    assert (jobs["state"] == "COMPLETED").all(), jobs
    # and nothing of the local rules was submitted
    assert not set(jobs["rule"]) & LOCAL_RULES
    logs = pipeline["work"] / ".snakemake/slurm_logs"
    assert {p.name for p in logs.iterdir()} == {f"rule_{r}" for r in expected}


def test_the_small_jobs_of_a_rule_go_as_one_array(pipeline):
    """The profile's slurm-array-jobs rules go as job arrays (ids <array>_<index>), fewer sbatch
    calls than jobs; training is never an array."""
    text = (REPO / "config/profiles/slurm/config.yaml").read_text()
    assert f'# slurm-array-jobs: "{ARRAY_RULES}"' in text, "the tests enable the documented line"
    array_rules = set(ARRAY_RULES.split(","))
    assert {"predict_stage", "evaluate_base", "score_prompts"} <= array_rules
    jobs = pipeline["jobs"]
    arrays = jobs[jobs["array_index"].notna()]
    assert set(arrays["rule"]) <= array_rules, "only the listed rules go as arrays"
    assert not jobs.query("rule == 'train_stage'")["array_index"].notna().any()
    per_rule = jobs.groupby("rule").agg(jobs=("job", "size"), calls=("submission", "nunique"))
    # evaluate_base has one job per task, all ready at once: one array
    assert per_rule.loc["evaluate_base", "calls"] == 1 < per_rule.loc["evaluate_base", "jobs"]
    assert per_rule["calls"].sum() < len(jobs), per_rule
    print(f"{len(jobs)} cluster jobs in {jobs['submission'].nunique()} sbatch calls:\n{per_rule}")
    logs = pipeline["work"] / ".snakemake/slurm_logs/rule_evaluate_base"
    assert {p.name for p in logs.rglob("*.log")} == {
        f"{row.submission}_{row.array_index}.log"
        for row in jobs.query("rule == 'evaluate_base'").itertuples()
    }


def test_the_efficiency_report_lists_every_job(pipeline):
    """--slurm-efficiency-report: the plugin's CSV from sacct, a row per job step with its CPU
    and memory efficiency. Plugin 2.8.0 keeps every plain job but not every task of an array
    (here 2 of evaluate_base's 3), and names an array's tasks after its first job's wildcards:
    a right-sizing aid, not an audit (docs/cluster.md)."""
    reports = list(pipeline["report"].glob("efficiency_report_*.csv"))
    assert len(reports) == 1, reports
    report = pd.read_csv(reports[0], dtype={"JobID": str})
    columns = {"RuleName", "Elapsed_sec", "CPU Efficiency (%)", "Memory Usage (%)"}
    assert columns <= set(report.columns), report.columns
    jobs = pipeline["jobs"]
    submission = report["JobID"].str.extract(r"^(\d+)")[0].astype(int)
    assert set(submission) == set(jobs["submission"]), "every sbatch call has its rows"
    for row in jobs[jobs["array_index"].isna()].itertuples():
        mine = report[report["JobID"] == f"{row.job}.0"]
        assert len(mine) == 1 and mine["RuleName"].iloc[0].startswith(f"rule_{row.rule}"), row
    assert report["CPU Efficiency (%)"].between(0, 100 * 4).all()


def test_gpu_rules_get_their_gpu_and_threads_equal_cpus(pipeline):
    for row in pipeline["jobs"].itertuples():
        tres = dict(item.split("=", 1) for item in row.alloc.split(","))
        if row.rule in GPU_RULES:
            assert tres.get("gres/gpu") == "1", row
            assert tres["cpu"] == "4", "cpus_per_gpu 4 × 1 GPU = the rule's 4 threads"
        else:
            assert "gres/gpu" not in tres, row
    # train_stage is the biggest memory request of the profile (64 GB × attempt 1)
    train = pipeline["jobs"].query("rule == 'train_stage'")
    assert train["req"].str.contains("mem=62.50G|mem=64000M").all()


def test_metrics_equal_those_of_a_local_run(pipeline):
    for name in ("accuracy_matrix.parquet", "summary.parquet"):
        on_slurm = pd.read_parquet(pipeline["work"] / f"results/{RUN}/metrics/{name}")
        local = pd.read_parquet(pipeline["local"] / f"results/{RUN}/metrics/{name}")
        timings = [c for c in on_slurm.columns if c.endswith("seconds")]  # wall clock differs
        pd.testing.assert_frame_equal(on_slurm.drop(columns=timings), local.drop(columns=timings))
    assert (pipeline["work"] / "results/summary.txt").is_file()


# --- preemption and time limits: a training job stopped mid-stage resumes on retry ------------


# Training must still be running when SLURM's time-limit warning comes 20-50 s into attempt 1
# (limits are checked only every ~30 s) and must fit in the doubled limit of the retry: about
# TRAIN_SECONDS of training. Steps per second differ by machine and by code version (a faster
# trainer once let attempt 1 finish before the warning), so the step count is measured here.
TRAIN_SECONDS = 90
CALIBRATION_STEPS = 200
TARGET = f"results/{RUN}/stage_1/adapter"
WEIGHTS = f"{TARGET}/adapter_model.safetensors"


def _preemption_config(model_dir: Path, steps: int) -> dict:
    config = tiny_config(model_dir)
    config["sequences"]["tiny"]["tasks"] = ["task195"]
    # no periodic checkpoint: the one to resume from can only come from the signal handler
    config["training"].update({"max_steps": steps, "save_steps": 10_000, "logging_steps": 1})
    return config


def _slurm_train_threads() -> int:
    """The threads the SLURM job's training gets: the profile's, capped by the CPUs the job
    can use (it runs with ``--cores all``: 2 on a 2-core machine, whatever the profile asks)."""
    profile = yaml.safe_load((REPO / "config/profiles/slurm/config.yaml").read_text())
    return min(int(profile["set-threads"]["train_stage"]), len(os.sched_getaffinity(0)))


def _train_locally(root: Path, model_dir: Path, steps: int) -> Path:
    """The stage trained locally with the threads the SLURM job's training gets: CPU training
    is bit-identical only at equal thread counts (eager attention's and some fp32 products'
    rounding depends on them; thousands of steps amplify it to other weights), and resuming is
    what is tested here, not thread-count invariance."""
    config = write_config(root / "config.yaml", _preemption_config(model_dir, steps))
    threads = _slurm_train_threads()
    snakemake(
        root,
        *(TARGET, "--configfile", str(config), "--cores", str(threads)),
        *("--set-threads", f"train_stage={threads}"),
    )
    return root


@pytest.fixture(scope="module")
def steps(tiny_model_dir, tmp_path_factory) -> int:
    """Training steps that take about TRAIN_SECONDS on this machine, measured by a short run."""
    root = _train_locally(tmp_path_factory.mktemp("calibration"), tiny_model_dir, CALIBRATION_STEPS)
    seconds = json.loads((root / TARGET / "promptcl_stage.json").read_text())["train_seconds"]
    return max(600, round(TRAIN_SECONDS * CALIBRATION_STEPS / seconds))


@pytest.fixture(scope="module")
def uninterrupted(tiny_model_dir, tmp_path_factory, steps) -> dict:
    """The same stage trained locally in one go: what every resumed run must end with."""
    root = _train_locally(tmp_path_factory.mktemp("uninterrupted"), tiny_model_dir, steps)
    return {"steps": steps, "weights": load_file(str(root / WEIGHTS))}


def _cancel_training_mid_stage(work: Path, stop: list) -> dict:
    """Wait for the train_stage job to log a few steps, then scancel it (SIGTERM, then KILL)."""
    log = work / f"results/logs/{RUN}/stage_1/train.log"
    deadline = time.time() + 900
    while time.time() < deadline and not stop:
        job_logs = list((work / ".snakemake/slurm_logs/rule_train_stage").glob("*/*.log"))
        text = log.read_text() if log.is_file() else ""
        if job_logs and text.count("'loss'") >= 3:
            job = job_logs[0].stem
            subprocess.run(["scancel", job], check=True)
            return {"job": int(job), "logged_steps": text.count("'loss'")}
        time.sleep(0.2)
    return {}


def _run_stage(
    root: Path, model_dir: Path, steps: int, train_timing: dict | None = None, watch=None
) -> dict:
    import threading

    config = write_config(root / "config.yaml", _preemption_config(model_dir, steps))
    work = root / "slurm"
    work.mkdir()
    seen: dict = {}
    stop: list = []
    thread = None
    if watch:
        thread = threading.Thread(target=lambda: seen.update(watch(work, stop)), daemon=True)
        thread.start()
    try:
        proc = run_on_slurm(
            work, slurm_test_profile(root, train_timing), TARGET, "--configfile", str(config)
        )
    finally:
        stop.append(True)
        if thread:
            thread.join(timeout=30)
    output = proc.stdout + proc.stderr
    info = json.loads((work / TARGET / "promptcl_stage.json").read_text())
    return {"work": work, "seen": seen, "jobs": sacct_jobs(output), "output": output, "info": info}


@pytest.fixture(scope="module")
def cancelled(slurm_cluster, tiny_model_dir, tmp_path_factory, steps) -> dict:
    root = tmp_path_factory.mktemp("slurm_scancel")
    return _run_stage(root, tiny_model_dir, steps, watch=_cancel_training_mid_stage)


@pytest.fixture(scope="module")
def time_limited(slurm_cluster, tiny_model_dir, tmp_path_factory, steps) -> dict:
    """train_stage with a 2-minute limit (× attempt) and SIGTERM 70 s before it.

    slurmctld checks limits every 30 s and sends the warning at the first check within
    warn + 30 s of the end: 20-50 s into attempt 1 (after setup, mid-training), 140-170 s
    into attempt 2 (after it has finished)."""
    root = tmp_path_factory.mktemp("slurm_time_limit")
    timing = {"runtime": "2 * attempt", "slurm_extra": "'--signal=TERM@70'"}
    return _run_stage(root, tiny_model_dir, steps, train_timing=timing)


def _states(run: dict) -> list[str]:
    train = run["jobs"].query("rule == 'train_stage'")
    return [state.split()[0] for state in train["state"]]  # sacct: "CANCELLED by <uid>"


def _assert_resumed_to_the_uninterrupted_adapter(run: dict, uninterrupted: dict) -> None:
    info, steps = run["info"], uninterrupted["steps"]
    assert info["interruptions"], "the signal handler recorded no interruption"
    assert {i["signal"] for i in info["interruptions"]} == {"SIGTERM"}
    assert 0 < info["resumed_at_step"] == info["interruptions"][-1]["step"] < steps
    assert info["steps"] == steps
    stage = run["work"] / f"results/{RUN}/stage_1"
    log = pd.read_parquet(stage / "train_log.parquet")
    assert list(log["step"]) == list(range(1, steps + 1)), "one continuous loss curve"
    assert not (stage / "state").exists(), "the state folder goes once the outputs are complete"
    got = load_file(str(run["work"] / WEIGHTS))
    want_weights = uninterrupted["weights"]
    assert got.keys() == want_weights.keys()
    for key, want in want_weights.items():
        assert torch.allclose(want, got[key], atol=1e-6), key


def test_cancelled_training_job_is_retried_by_snakemake(cancelled):
    assert cancelled["seen"], "the training job was never seen running"
    assert _states(cancelled) == ["CANCELLED", "COMPLETED"], cancelled["jobs"]
    train = cancelled["jobs"].query("rule == 'train_stage'")
    assert train["submission"].iloc[0] == cancelled["seen"]["job"]
    assert cancelled["info"]["interruptions"][0]["step"] >= cancelled["seen"]["logged_steps"]


def test_cancelled_job_resumed_from_its_sigterm_checkpoint_to_the_same_adapter(
    cancelled, uninterrupted
):
    _assert_resumed_to_the_uninterrupted_adapter(cancelled, uninterrupted)


def test_time_limit_warning_checkpoints_and_the_longer_retry_resumes(time_limited, uninterrupted):
    states = _states(time_limited)
    # attempt 1 is warned and fails; a warning can also reach a slow attempt 2 (then 3 finishes)
    assert states[-1] == "COMPLETED" and set(states[:-1]) == {"FAILED"}, time_limited["jobs"]
    train = time_limited["jobs"].query("rule == 'train_stage'")
    limits = list(train["timelimit"])
    assert limits[:2] == ["00:02:00", "00:04:00"], "the retry asks for runtime × attempt"
    _assert_resumed_to_the_uninterrupted_adapter(time_limited, uninterrupted)
