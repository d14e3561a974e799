"""Experiment tracking (config ``tracking``): two tiny O-LoRA stages and a run's aggregation
logged to TensorBoard and MLflow's local file store, read back from the event files and the
store; no absolute path or secret in anything logged; tracking off writes and imports nothing."""

from __future__ import annotations

import os
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import pandas as pd
import pytest
import yaml

from promptcl.methods import METHODS
from promptcl.tracking import TrackingSpec, loggable, track_run_metrics
from tests.helpers.stages import stage_job

REPO = Path(__file__).resolve().parents[2]
SECRET = "sk-test-0123456789abcdef-not-a-real-key"
ON = {"backends": ["tensorboard", "mlflow"], "dir": "tracking", "experiment": "promptcl"}
RUN = "r-olora"


def _scores() -> pd.DataFrame:
    """A stage's candidate scores as score_prompts writes them (two candidates)."""
    return pd.DataFrame(
        {
            "candidate_id": [0, 1],
            "mean_batch_loss": [1.5, 0.75],
            "mean_instance_loss": [1.6, 0.8],
            "mean_token_loss": [1.5, 0.75],
            "tokens": [80, 80],
            "instances": [8, 8],
            "answer_accuracy": [50.0, 62.5],
            "seconds": [3.0, 3.0],
        }
    )


def _aggregation() -> tuple[pd.DataFrame, pd.DataFrame, str]:
    """R and the summary of a 2-stage run, in aggregate_run's columns."""
    cells = pd.DataFrame(
        [
            {"run": RUN, "protocol": "original_prompt", "stage": k, "task": t, "role": "sequence",
             "metric": "rougeL", "score": 10.0 * k + i, "stderr": 1.0, "n": 8}
            for k in (0, 1, 2)
            for i, t in enumerate(("t1", "t2"))
        ]
    )  # fmt: skip
    summary = pd.DataFrame(
        [{"run": RUN, "protocol": "original_prompt", "sequence": "s", "method": "olora",
          "strategy": "original", "seed": 0, "metric": "rougeL", "T": 2, "AP": 21.5,
          "BWT": -1.25, "FWT": 3.0, "F": 1.25, "ACC": 22.0, "unseen_mean": float("nan")}]
    )  # fmt: skip
    return cells, summary, "R (rougeL)\n  stage 1: 10.0 11.0\n  stage 2: 20.0 21.0\n"


@pytest.fixture(scope="module")
def tracked(tiny_model_dir, tmp_path_factory) -> Path:
    """Two O-LoRA stages (stage 2 carries the orthogonality penalty) and the aggregation,
    tracked into <work>/results/tracking, with a fake secret in the environment."""
    from promptcl.train.recipe import run_stage

    work = tmp_path_factory.mktemp("tracked")
    from snakemake.utils import validate

    config = yaml.safe_load((REPO / "config/config.yaml").read_text())
    validate(config, str(REPO / "config/schema.yaml"))  # the schema's defaults
    options = METHODS["olora"].options(config)
    old, os.environ["OPENAI_API_KEY"] = os.environ.get("OPENAI_API_KEY"), SECRET
    cwd = Path.cwd()
    os.chdir(work)  # the tracking folder is relative to results/, as in a workflow run
    try:
        first = stage_job(work / "s1", tiny_model_dir, "olora", options)
        _scores().to_parquet(work / "s1" / "scores.parquet")
        small = {**first.training, "batch_size": 2}
        first = replace(
            first, scores=str(work / "s1" / "scores.parquet"), training=small, tracking=ON
        )
        run_stage(first)
        second = stage_job(work / "s2", tiny_model_dir, "olora", options)
        second = replace(second, stage=2, previous=[first.adapter_out], training=small, tracking=ON)
        run_stage(second)
        track_run_metrics(ON, RUN, *_aggregation())
    finally:
        os.chdir(cwd)
        if old is None:
            del os.environ["OPENAI_API_KEY"]
        else:
            os.environ["OPENAI_API_KEY"] = old
    return work


def _events(folder: Path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(folder), size_guidance={"scalars": 0, "tensors": 0})
    events.Reload()
    return events


def _text(events, tag: str) -> str:
    return b"".join(t.tensor_proto.string_val[0] for t in events.Tensors(tag)).decode()


def test_tensorboard_event_files_have_each_stage_and_the_run_metrics(tracked):
    root = tracked / "results/tracking/tensorboard" / RUN
    assert sorted(p.name for p in root.iterdir()) == ["metrics", "stage_1", "stage_2"]
    for stage, steps in (("stage_1", 4), ("stage_2", 4)):  # 8 examples, batches of 2
        events = _events(root / stage)
        loss = events.Scalars("train/loss")
        assert [e.step for e in loss] == list(range(1, steps + 1)), stage
        assert all(e.value > 0 for e in loss)
    stage_1, stage_2 = _events(root / "stage_1"), _events(root / "stage_2")
    assert all(e.value == 0 for e in stage_1.Scalars("train/penalty")), "no earlier LoRA yet"
    penalty = stage_2.Scalars("train/penalty")
    assert len(penalty) == 4 and all(e.value > 0 for e in penalty), "O-LoRA's term per step"
    assert {"train/task_loss", "train/orthogonal"} <= set(stage_2.Tags()["scalars"])
    candidates = stage_1.Scalars("candidates/mean_token_loss")
    assert [(e.step, e.value) for e in candidates] == [(0, 1.5), (1, 0.75)]
    assert "Say the label." in _text(stage_1, "prompt_chosen/text_summary")
    metrics = _events(root / "metrics")
    r = metrics.Scalars("R/original_prompt/rougeL/t2")
    assert [(e.step, e.value) for e in r] == [(0, 1.0), (1, 11.0), (2, 21.0)]
    assert metrics.Scalars("original_prompt/rougeL/AP")[0].value == 21.5
    assert "original_prompt/rougeL/unseen_mean" not in metrics.Tags()["scalars"], "NaN skipped"


def test_mlflow_store_has_one_run_with_a_child_per_stage(tracked):
    from mlflow.tracking import MlflowClient

    os.environ.setdefault("MLFLOW_ALLOW_FILE_STORE", "true")  # MLflow 3's file store opt-in
    client = MlflowClient(tracking_uri=(tracked / "results/tracking/mlruns").as_uri())
    experiment = client.get_experiment_by_name("promptcl")
    runs = client.search_runs([experiment.experiment_id])
    parents = [r for r in runs if r.data.tags["promptcl.level"] == "run"]
    assert len(parents) == 1 and len(runs) == 3, "one tracked run per workflow run"
    parent = parents[0]
    assert parent.data.tags["run"] == RUN and parent.data.tags["method"] == "olora"
    assert parent.info.status == "FINISHED", "ended by the aggregation"
    children = {r.data.tags["stage"]: r for r in runs if r is not parent}
    assert sorted(children) == ["1", "2"]
    for stage, child in children.items():
        assert child.data.tags["mlflow.parentRunId"] == parent.info.run_id
        assert child.info.status == "FINISHED"
        assert child.data.params["stage"] == stage and child.data.params["method"] == "olora"
        assert child.data.params["prompt.chosen_candidate_id"] == "0"
        loss = client.get_metric_history(child.info.run_id, "loss")
        assert [m.step for m in loss] == [1, 2, 3, 4]
        chosen = client.download_artifacts(child.info.run_id, "prompt_chosen.txt")
        assert Path(chosen).read_text() == "Say the label."
    penalty = client.get_metric_history(children["2"].info.run_id, "penalty")
    assert len(penalty) == 4 and all(m.value > 0 for m in penalty)
    assert children["1"].data.metrics["penalty"] == 0.0
    losses = client.get_metric_history(children["1"].info.run_id, "candidates/mean_token_loss")
    assert [(m.step, m.value) for m in losses] == [(0, 1.5), (1, 0.75)]
    assert parent.data.metrics["original_prompt/rougeL/BWT"] == -1.25
    r = client.get_metric_history(parent.info.run_id, "R/original_prompt/rougeL/t1")
    assert sorted((m.step, m.value) for m in r) == [(0, 0.0), (1, 10.0), (2, 20.0)]
    matrix = client.download_artifacts(parent.info.run_id, "accuracy_matrix.csv")
    assert len(pd.read_csv(matrix)) == 6


def test_nothing_logged_names_an_absolute_path_or_a_secret(tracked):
    """Every event file and every stored param, tag, metric and artifact. The only exception is
    MLflow's own store metadata (meta.yaml: where the store keeps each run's artifacts)."""
    forbidden = [SECRET, str(tracked), "/work", "/tmp", os.path.expanduser("~"), str(REPO)]
    files = [
        p
        for p in (tracked / "results/tracking").rglob("*")
        if p.is_file() and p.name != "meta.yaml"
    ]
    assert any("tfevents" in p.name for p in files) and any("params" in p.parts for p in files)
    for path in files:
        data = path.read_bytes()
        for word in forbidden:
            assert word.encode() not in data, f"{word} in {path.relative_to(tracked)}"


def test_tracking_spec_and_what_counts_as_loggable():
    spec = TrackingSpec.from_config({})
    assert not spec.enabled and spec.root == Path("results/tracking")
    assert spec.mlflow_uri().startswith("file://") and spec.mlflow_uri().endswith("/mlruns")
    with pytest.raises(ValueError, match="wandb"):
        TrackingSpec.from_config({"backends": ["wandb"]})
    assert loggable(0.5) and loggable("cosine") and loggable("config/deepspeed/zero2.json")
    assert not loggable(float("nan")) and not loggable(None) and not loggable([1])
    assert not loggable("/scratch/me/model") and not loggable("path=~/x")
    assert not loggable("C:\\models") and not loggable(os.path.expanduser("~") + "x")


def test_tracking_off_writes_nothing_and_imports_neither_package(tiny_model_dir, tmp_path):
    """The schema's default (no backends): a stage and an aggregation in a fresh interpreter,
    where no promptcl module imports mlflow or tensorboard. (DeepSpeed's autotuner, which
    accelerate loads for every training, imports mlflow on its own whenever it is installed.)"""
    script = f"""
import sys, traceback
from pathlib import Path

class Watch:
    importers = []
    def find_spec(self, name, path=None, target=None):
        if name in ("mlflow", "tensorboard", "torch.utils.tensorboard"):
            frames = [f for f in traceback.extract_stack() if not f.filename.startswith("<")]
            importer = frames[-2].filename  # the frame below this finder
            if "promptcl" in Path(importer).parts:
                self.importers.append((name, importer))
        return None

sys.meta_path.insert(0, Watch())
from tests.helpers.stages import stage_job
from promptcl.train.recipe import run_stage
from promptcl.tracking import track_run_metrics
from tests.unit.test_tracking import _aggregation
run_stage(stage_job(Path("s1"), Path({str(tiny_model_dir)!r})))
track_run_metrics({{"backends": []}}, "r", *_aggregation())
print(Watch.importers)
"""
    env = {**os.environ, "PYTHONPATH": f"{REPO / 'workflow_scripts'}{os.pathsep}{REPO}"}
    out = subprocess.run(
        [sys.executable, "-c", script], cwd=tmp_path, env=env, capture_output=True, text=True
    )
    assert out.returncode == 0, out.stderr[-3000:]
    assert out.stdout.strip().splitlines()[-1] == "[]"
    assert (tmp_path / "s1/adapter").is_dir()
    assert not (tmp_path / "results").exists() and not (tmp_path / "mlruns").exists()


def test_schema_default_is_off_and_refuses_credentials_in_the_uri():
    from snakemake.utils import validate

    config = yaml.safe_load((REPO / "config/config.yaml").read_text())
    validate(config, str(REPO / "config/schema.yaml"))
    assert config["tracking"] == {
        "backends": [],
        "dir": "tracking",
        "mlflow_tracking_uri": None,
        "experiment": "promptcl",
    }
    for bad in (
        {"mlflow_tracking_uri": "https://user:pw@mlflow.example.org"},
        {"dir": "/abs"},
        {"dir": "../up"},
    ):
        with pytest.raises(Exception, match="tracking"):
            validate({**config, "tracking": bad}, str(REPO / "config/schema.yaml"))


def test_the_stage_job_takes_tracking_from_the_config_and_outside_its_fingerprint(tmp_path):
    """Read from the config, not a param (turning it on reruns nothing), carried to torchrun
    ranks in job.json, and no reason to discard a stage's checkpoints."""
    from types import SimpleNamespace

    from promptcl.train.job import StageJob

    class Files(dict):
        __getattr__ = dict.__getitem__

    def smk(tracking: dict) -> SimpleNamespace:
        return SimpleNamespace(
            wildcards=SimpleNamespace(stage="1"),
            input=Files(model="m", train="t.parquet", candidates="c.parquet"),
            output=SimpleNamespace(adapter="a", train_log="l.parquet"),
            params=SimpleNamespace(
                stage={"run": RUN, "method": "olora", "strategy": "original", "seed": 0},
                task="t",
                state_dir="s",
                model={},
                prompt={},
                lora={},
                training={},
                options={},
                companions=[],
            ),
            threads=1,
            resources={},
            config={"tracking": tracking},
        )

    on, off = StageJob.from_snakemake(smk(ON)), StageJob.from_snakemake(smk({"backends": []}))
    assert on.tracking == ON and off.tracking == {"backends": []}
    assert on.fingerprint(1) == off.fingerprint(1)
    assert StageJob.load(on.save(tmp_path / "job.json")).tracking == ON
