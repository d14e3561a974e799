"""generation.engine: vllm through the tiny-model DAG, with the CPU build of vLLM in .venv-vllm
(make test installs it): the same predictions as the hf engine on a tiny fp32 model, the stacked
LoRAs served as one combined adapter, and a clear error when the engine cannot start."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import pandas as pd
import pytest

from promptcl.evaluate.evaluation import PredictJob, predict_tasks
from promptcl.evaluate.inference import GenerationSpec
from promptcl.prompts.prompting import PromptFormat
from tests.helpers import REPO
from tests.helpers.models import build_tiny_model
from tests.helpers.workflow import SEQUENCE, snakemake, tiny_config, write_config

RUN = "tiny-inclora-original-s0"
UNSEEN = ["task1343"]
VLLM_PYTHON = REPO / ".venv-vllm/bin/python"


@pytest.fixture(scope="module")
def vllm_model_dir(tmp_path_factory) -> Path:
    """vLLM's attention kernels take common head sizes only: 2 heads of 64."""
    return build_tiny_model(tmp_path_factory.mktemp("vllm_model"), head_dim=64)


def vllm_config(model_dir: Path, **generation) -> dict:
    config = tiny_config(model_dir)
    config["generation"] = {
        "max_new_tokens": 6,
        "batch_size": 8,
        "engine": "vllm",
        # eager: no torch.compile at start-up (about 10-35 s less per engine on this CPU)
        "vllm": {"python": str(VLLM_PYTHON), "cpu_kvcache_gb": 1, "enforce_eager": True},
        **generation,
    }
    # one held-out paraphrase per task (every evaluated task has a pool): the job's original,
    # held-out and trained prompts all go to the engine in one batch
    config["sequences"] = {"tiny": {"tasks": SEQUENCE, "unseen": UNSEEN}}
    config["evaluation"] = {"heldout_prompts": 1}
    return config


@pytest.fixture(scope="module")
def served(vllm_model_dir, tmp_path_factory) -> Path:
    work = tmp_path_factory.mktemp("vllm_dag")
    cfg = write_config(work / "config.yaml", vllm_config(vllm_model_dir))
    snakemake(work, "--configfile", str(cfg))
    return work


def hf_predictions(work: Path, adapters: list[str], stage: int):
    """The hf engine's predictions of the same state, tasks and prompts, in this process."""
    config = vllm_config(Path("unused"))
    tasks = SEQUENCE + UNSEEN
    records = [str(work / f"results/{RUN}/stage_{k}/adapter") for k in range(1, stage + 1)]
    from promptcl.evaluate.evaluation import trained_prompts

    job = PredictJob(
        tasks=tasks,
        tables=[str(work / f"results/tasks/{t}/test.parquet") for t in tasks],
        pools=[str(work / f"results/prompts/{t}/candidates.parquet") for t in tasks],
        trained=trained_prompts(records),
        fmt=PromptFormat.from_config(config["prompt"]),
        gen=GenerationSpec.from_config({**config["generation"], "engine": "hf"}),
        generation=config["generation"],
        model_options={"precision": "fp32", "trust_remote_code": False},
        model_dir=str(work / "results/model/hf"),
        adapters=adapters,
    )
    return predict_tasks(job, logging.getLogger("test"))


@pytest.mark.parametrize("stage", [0, 1, 2])
def test_vllm_predictions_equal_the_hf_engines_in_fp32(served, stage):
    """Zero-shot (no LoRA), after stage 1 (its one LoRA) and after stage 2 (two stacked LoRAs
    served as one combined adapter): the same answers, token for token."""
    adapters = [str(served / f"results/{RUN}/stage_{k}/adapter") for k in range(1, stage + 1)]
    want = hf_predictions(served, adapters, stage)
    for task in SEQUENCE + UNSEEN:
        path = (
            served / f"results/zero_shot/predictions/{task}.parquet"
            if stage == 0
            else served / f"results/{RUN}/stage_{stage}/predictions/{task}.parquet"
        )
        got = pd.read_parquet(path)
        assert set(got["prompt_id"]) >= {"original", "heldout_1"}
        pd.testing.assert_series_equal(
            got["raw_prediction"], want[task]["raw_prediction"], check_names=False
        )
        assert got["rougeL"].notna().all()


def test_the_stacked_state_is_one_combined_lora_and_the_engine_start_is_logged(served):
    combined = served / f"results/{RUN}/stage_2/combined_adapter"
    config = json.loads((combined / "adapter_config.json").read_text())
    assert config["r"] == 16 and config["lora_alpha"] == 16  # two rank-8 LoRAs, scaling folded
    assert not (served / f"results/{RUN}/stage_1/combined_adapter").exists()
    log = (served / f"results/logs/{RUN}/stage_2/predictions.log").read_text()
    assert "combined_adapter" in log and "engine start" in log


def test_an_engine_that_cannot_start_fails_its_job_naming_the_setting(vllm_model_dir, tmp_path):
    config = vllm_config(vllm_model_dir, vllm={"python": str(tmp_path / "none/bin/python")})
    cfg = write_config(tmp_path / "config.yaml", config)
    proc = snakemake(tmp_path, "--configfile", str(cfg), check=False)
    assert proc.returncode != 0
    logs = "".join(p.read_text() for p in (tmp_path / "results/logs").rglob("*.log"))
    assert "generation.vllm.python" in logs and "make vllm" in logs
    # what other jobs computed stays
    assert (tmp_path / "results/model/hf/config.json").is_file()
    assert (tmp_path / f"results/tasks/{SEQUENCE[0]}/test.parquet").is_file()
