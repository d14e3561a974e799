"""The tiny-model workflow run that several workflow test modules read (computed once)."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.helpers.workflow import snakemake, tiny_config, write_config


@pytest.fixture(scope="session")
def finished(tiny_model_dir, tmp_path_factory) -> Path:
    work = tmp_path_factory.mktemp("workflow")
    cfg = write_config(work / "config.yaml", tiny_config(tiny_model_dir))
    snakemake(work, "--configfile", str(cfg))
    return work
