"""Stacked LoRAs combined into one: the combined adapter's fp32 logits equal the stacked
model's, for 1-5 stages with mixed ranks, alphas and target modules."""

from __future__ import annotations

import json

import pytest
import torch

from promptcl.model.modeling import attach_adapters, load_base_model
from promptcl.train.combine import CombineError, combine_loras

STAGES = [  # (rank, alpha, target modules) of each stage's LoRA
    (8, 32, ["q_proj", "v_proj"]),
    (4, 16, ["q_proj", "v_proj"]),
    (2, 3, ["q_proj", "v_proj", "o_proj"]),
    (16, 8, ["v_proj"]),
    (1, 1, ["q_proj", "k_proj", "v_proj"]),
]


def save_stage(model_dir, out, rank: int, alpha: int, modules: list[str], seed: int):
    """A LoRA with random A and B (a trained one's B is not zero), saved as a PEFT folder."""
    from peft import LoraConfig, get_peft_model

    torch.manual_seed(seed)
    config = LoraConfig(r=rank, lora_alpha=alpha, target_modules=modules, lora_dropout=0.1)
    model = get_peft_model(load_base_model(model_dir), config)
    with torch.no_grad():
        for name, param in model.named_parameters():
            if "lora_" in name:
                param.normal_(0, 0.5)
    model.save_pretrained(str(out))
    return out


@pytest.fixture(scope="module")
def stages(tiny_model_dir, tmp_path_factory):
    root = tmp_path_factory.mktemp("stages")
    return [
        save_stage(tiny_model_dir, root / f"stage_{i}", r, a, m, seed=i)
        for i, (r, a, m) in enumerate(STAGES, start=1)
    ]


@pytest.mark.parametrize("k", [1, 2, 3, 4, 5])
def test_the_combined_lora_gives_the_stacked_models_logits(tiny_model_dir, stages, tmp_path, k):
    from peft import PeftModel

    ids = torch.tensor([[1, 5, 9, 200, 31, 7, 400, 12]])
    stacked = attach_adapters(load_base_model(tiny_model_dir), stages[:k]).eval()
    summary = combine_loras(stages[:k], tmp_path / "combined")
    combined = PeftModel.from_pretrained(
        load_base_model(tiny_model_dir), str(tmp_path / "combined")
    ).eval()
    with torch.no_grad():
        want, got = stacked(input_ids=ids).logits, combined(input_ids=ids).logits
        base = load_base_model(tiny_model_dir)(input_ids=ids).logits
    assert (want - base).abs().max() > 1e-3  # the LoRAs do change the model
    # float32 rounding: the sums run in another order (logits of magnitude ~3 here)
    assert (got - want).abs().max() < 5e-5
    config = json.loads((tmp_path / "combined/adapter_config.json").read_text())
    assert config["r"] == sum(r for r, _, _ in STAGES[:k]) == summary["rank"]
    assert config["lora_alpha"] == config["r"]
    assert set(config["target_modules"]) == {m for _, _, ms in STAGES[:k] for m in ms}


def test_variants_that_do_not_stack_exactly_are_refused(stages, tmp_path):
    cfg_path = stages[0] / "adapter_config.json"
    original = cfg_path.read_text()
    try:
        cfg_path.write_text(json.dumps({**json.loads(original), "use_dora": True}))
        with pytest.raises(CombineError, match="use_dora"):
            combine_loras(stages[:2], tmp_path / "out")
    finally:
        cfg_path.write_text(original)
    with pytest.raises(CombineError, match="not a PEFT adapter"):
        combine_loras([tmp_path], tmp_path / "out")
