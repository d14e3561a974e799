"""The openai backend through the workflow: its reply cache, and the key never stored."""

from __future__ import annotations

import json

import pandas as pd

from tests.helpers import REPO
from tests.helpers.workflow import (
    snakemake,
    tiny_config,
    write_config,
)


def test_openai_backend_in_the_workflow_caches_and_never_stores_the_key(
    tmp_path, tiny_model_dir, monkeypatch
):
    from tests.helpers.chat_server import KEY, KEY_ENV, Canned, ChatServer, completion

    original = json.loads((REPO / "resources/tasks/sentence_label/instructions.json").read_text())[
        "task195_sentiment140_classification"
    ]["instruction"]
    server = ChatServer()
    server.default = lambda body: Canned(
        200, completion(f"<instruction>Variant {body['seed']}. {original}</instruction>")
    )
    server.start()
    monkeypatch.setenv(KEY_ENV, KEY)
    try:
        config = tiny_config(tiny_model_dir, sequences={"api": {"tasks": ["task195"]}})
        config["runs"] = {"sequences": ["api"]}
        config["prompts"] = {
            "backend": "openai",
            "candidates": 3,
            "min_valid": 3,
            "openai": {"base_url": server.base_url, "model": "m", "api_key_env": KEY_ENV},
        }
        cfg = write_config(tmp_path / "config.yaml", config)
        target = "results/prompts/task195/candidates.parquet"
        first = snakemake(tmp_path, target, "--configfile", str(cfg))
        assert server.calls == 3
        table = pd.read_parquet(tmp_path / target)
        assert table["valid"].all() and set(table.loc[1:, "source"]) == {"openai"}
        again = snakemake(tmp_path, target, "--configfile", str(cfg), "--forcerun")
        assert server.calls == 3, "the reply cache answers a rerun"
        assert pd.read_parquet(tmp_path / target).equals(table)
    finally:
        server.stop()
    assert all(seen.headers["authorization"] == f"Bearer {KEY}" for seen in server.requests)
    leaked = [str(p) for p in tmp_path.rglob("*") if p.is_file() and KEY.encode() in p.read_bytes()]
    assert leaked == [], f"API key written to {leaked}"
    for proc in (first, again):
        assert KEY not in proc.stdout + proc.stderr
