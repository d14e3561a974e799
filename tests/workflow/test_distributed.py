"""The multi-process and DeepSpeed training paths, run through the train_stage rule on the CPU.

One work folder: a plain stage 1, then the same stage retrained with DeepSpeed ZeRO-2 in a single
process (its loss curve must match the plain one), then with two DDP processes (only rank 0
writes), then with packed rows (training.packing) plain, under ZeRO-2 and under DDP. Each
variant changes `training` params, so Snakemake reruns just train_stage.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from safetensors.torch import load_file

from promptcl.train.job import FINGERPRINT_FILE, StageJob, claim_state_dir
from promptcl.train.specs import schema_defaults
from tests.helpers import REPO
from tests.helpers.workflow import snakemake, tiny_config, write_config

RUN = "tiny-inclora-original-s0"
STAGE = f"results/{RUN}/stage_1"


def _train(work: Path, name: str, **training) -> dict:
    config = tiny_config(work.parent / "model")
    config["training"].update({"max_steps": 4, "save_steps": 2, **training})
    config["sequences"]["tiny"]["tasks"] = ["task195"]
    cfg = write_config(work / f"config_{name}.yaml", config)
    snakemake(work, f"{STAGE}/adapter", f"{STAGE}/train_log.parquet", "--configfile", str(cfg))
    info = json.loads((work / STAGE / "adapter/promptcl_stage.json").read_text())
    return {
        "info": info,
        "log": pd.read_parquet(work / STAGE / "train_log.parquet"),
        "adapter": load_file(str(work / STAGE / "adapter/adapter_model.safetensors")),
        "text": (work / f"results/logs/{RUN}/stage_1/train.log").read_text(),
    }


@pytest.fixture(scope="module")
def variants(tiny_model_dir, tmp_path_factory) -> dict[str, dict]:
    root = tmp_path_factory.mktemp("distributed")
    (root / "model").symlink_to(tiny_model_dir)
    work = root / "work"
    work.mkdir()
    return {
        "plain": _train(work, "plain"),
        "deepspeed": _train(work, "ds", deepspeed_single_process=True),
        "ddp2": _train(work, "ddp2", processes=2, deepspeed=None),
        "zero3": _train(
            work, "zero3", deepspeed="config/deepspeed/zero3.json", deepspeed_single_process=True
        ),
        "packed": _train(work, "packed", packing=True),
        "packed_zero2": _train(work, "packed_ds", packing=True, deepspeed_single_process=True),
        "packed_ddp2": _train(work, "packed_ddp2", packing=True, processes=2, deepspeed=None),
    }


def test_deepspeed_zero2_single_process_matches_the_plain_loss_curve(variants):
    plain, ds = variants["plain"], variants["deepspeed"]
    assert "DeepSpeed" in ds["text"] and "zero2.json" in ds["text"]
    assert "--nproc-per-node=1" in ds["text"], "DeepSpeed runs under the launcher"
    assert ds["info"]["spec"]["deepspeed"].endswith("config/deepspeed/zero2.json")
    assert plain["info"]["spec"]["deepspeed"] is None
    assert list(ds["log"]["step"]) == list(plain["log"]["step"]) == [1, 2, 3, 4]
    np.testing.assert_allclose(ds["log"]["loss"], plain["log"]["loss"], rtol=1e-4)
    for key, want in plain["adapter"].items():
        np.testing.assert_allclose(ds["adapter"][key].float(), want.float(), atol=1e-5)


def test_deepspeed_zero3_gathers_the_sharded_lora_before_saving(variants):
    plain, z3 = variants["plain"], variants["zero3"]
    assert z3["info"]["spec"]["deepspeed"].endswith("config/deepspeed/zero3.json")
    np.testing.assert_allclose(z3["log"]["loss"], plain["log"]["loss"], rtol=1e-4)
    for key, want in plain["adapter"].items():
        assert z3["adapter"][key].shape == want.shape, "a full tensor, not an empty shard"
        np.testing.assert_allclose(z3["adapter"][key].float(), want.float(), atol=1e-5)


def test_two_processes_train_with_ddp_and_only_rank_0_writes(variants):
    ddp = variants["ddp2"]
    assert ddp["info"]["world_size"] == 2 and ddp["info"]["spec"]["deepspeed"] is None
    assert "--nproc-per-node=2" in ddp["text"]
    assert "rank0" in ddp["text"] and "rank1" in ddp["text"]
    assert ddp["text"].count("promptcl.stage: done:") == 1, "only rank 0 saves the stage"
    # the same 4 steps of micro-batches of 4 on each rank: 2 steps per epoch of 16 examples
    assert ddp["info"]["steps"] == 4 and len(ddp["log"]) == 4
    assert set(ddp["adapter"]) == set(variants["plain"]["adapter"])


def test_packed_rows_train_alike_under_deepspeed_and_ddp(variants):
    """training.packing under DeepSpeed ZeRO-2 follows the plain packed path's loss curve and
    adapter; under DDP each rank packs its own micro-batch and trains the same steps."""
    packed, ds, ddp = variants["packed"], variants["packed_zero2"], variants["packed_ddp2"]
    assert packed["info"]["spec"]["packing"] and ds["info"]["spec"]["packing"]
    assert list(packed["log"]["tokens"]) == list(variants["plain"]["log"]["tokens"])
    np.testing.assert_allclose(ds["log"]["loss"], packed["log"]["loss"], rtol=1e-4)
    for key, want in packed["adapter"].items():
        np.testing.assert_allclose(ds["adapter"][key].float(), want.float(), atol=1e-5)
    assert ddp["info"]["world_size"] == 2 and ddp["info"]["spec"]["packing"]
    assert ddp["info"]["steps"] == 4 and ddp["text"].count("promptcl.stage: done:") == 1


def _two_stages_under_ddp(tmp_path: Path, model_dir: Path, method: str, **options) -> tuple:
    """Stage 2 of a tiny ``method`` run trained by two DDP processes: (stage folder, its record,
    the log text)."""
    tmp_path.mkdir(parents=True, exist_ok=True)
    (tmp_path / "model").symlink_to(model_dir)
    config = tiny_config(tmp_path / "model")
    config["runs"]["methods"] = [method]
    config.update(options)
    config["training"].update({"processes": 2, "deepspeed": None, "batch_size": 2})
    cfg = write_config(tmp_path / "config.yaml", config)
    stage = tmp_path / f"results/tiny-{method}-original-s0/stage_2"
    snakemake(tmp_path, str(stage.relative_to(tmp_path) / "adapter"), "--configfile", str(cfg))
    text = (tmp_path / f"results/logs/tiny-{method}-original-s0/stage_2/train.log").read_text()
    record = json.loads((stage / "adapter/promptcl_stage.json").read_text())
    assert record["world_size"] == 2 and text.count("promptcl.stage: done:") == 1
    return stage, record, text


def test_agem_projects_alike_on_every_ddp_rank(tiny_model_dir, tmp_path):
    """A-GEM's stage 2 under two DDP processes: each rank draws the same memory batch (and
    dropout masks) and holds the same averaged gradient, so each logs the same g·g_ref and the
    same decision for every update."""
    import re

    agem = {"agem": {"memory_per_task": 4, "reference_examples": 2}}
    _, record, text = _two_stages_under_ddp(tmp_path, tiny_model_dir, "agem", **agem)
    updates = {
        rank: re.findall(rf"rank{rank} .*A-GEM update (\d+): g.g_ref = (\S+), (\w+)", text)
        for rank in (0, 1)
    }
    assert len(updates[0]) == record["steps"] == record["agem"]["steps"]["updates"]
    assert updates[0] == updates[1]
    assert record["agem"]["steps"]["projected"] == sum(u[2] == "projected" for u in updates[0])


def test_ilora_and_osf_train_under_ddp(tiny_model_dir, tmp_path):
    """I-LoRA's extra forward passes (the buffer through the fast learner, the slow learner
    without gradients) and OSF's gradient hooks and re-projection under two DDP processes."""
    ilora = {"ilora": {"buffer_size": 4}}
    stage, record, _ = _two_stages_under_ddp(tmp_path / "i", tiny_model_dir, "ilora", **ilora)
    assert (stage / "adapter/slow/adapter_model.safetensors").is_file()
    assert {"buffer_loss", "consistency"} <= set(pd.read_parquet(stage / "train_log.parquet"))
    stage, record, _ = _two_stages_under_ddp(tmp_path / "o", tiny_model_dir, "osf")
    assert record["osf"]["loads_onto"].startswith("the base model with stages [1]")


def _job(tmp_path: Path, **training) -> StageJob:
    return StageJob(
        stage=1,
        run={"run": "r", "method": "inclora", "strategy": "original", "seed": 0},
        task="t",
        model_dir="m",
        train="t.parquet",
        candidates="c.parquet",
        adapter_out="a",
        train_log_out="l.parquet",
        state_dir=str(tmp_path / "state"),
        model={"precision": "fp32", "trust_remote_code": False},
        prompt={},
        lora=schema_defaults("lora"),
        training={**schema_defaults("training"), "learning_rate": 1e-3, **training},
        deepspeed_config=str(REPO / "config/deepspeed/zero2.json"),
    )


def test_state_folder_keeps_checkpoints_only_for_the_same_job_and_launch(tmp_path):
    job = _job(tmp_path)
    state = Path(job.state_dir)
    claim_state_dir(state, job.fingerprint(1))
    (state / "checkpoint-2").mkdir()
    claim_state_dir(state, job.fingerprint(1))  # a retry of the same job: kept
    assert (state / "checkpoint-2").is_dir()
    assert json.loads((state / FINGERPRINT_FILE).read_text())["processes"] == 1
    claim_state_dir(state, job.fingerprint(2))  # ZeRO/DDP state is tied to the process count
    assert not (state / "checkpoint-2").exists()
    (state / "checkpoint-2").mkdir()
    changed = _job(tmp_path, learning_rate=2e-3)
    claim_state_dir(state, changed.fingerprint(2))  # other parameters: another job's weights
    assert not (state / "checkpoint-2").exists()


def test_olora_refuses_zero3_by_name(tmp_path):
    from promptcl.train.recipe import run_stage

    job = _job(tmp_path, deepspeed_single_process=True)
    job.run["method"] = "olora"
    job.deepspeed_config = job.deepspeed_config.replace("zero2", "zero3")
    with pytest.raises(ValueError, match="training.deepspeed: .*zero3.json is ZeRO-3"):
        run_stage(job)


def test_deepspeed_is_used_for_several_processes_or_when_asked(tmp_path):
    job = _job(tmp_path)
    assert not job.uses_deepspeed(1) and job.uses_deepspeed(2)
    assert _job(tmp_path, deepspeed_single_process=True).uses_deepspeed(1)
    job.deepspeed_config = None
    assert not job.uses_deepspeed(4)
    assert job.train_spec(4).deepspeed is None
