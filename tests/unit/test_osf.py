"""OSF through PEFT: a trained stage keeps the preserved singular directions of every targeted
weight, the stage folders reload into the state the stage trained (merged in order), PEFT's
``unload()`` would drop a stage's training, and the configs and launches it refuses."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch

from promptcl.methods import METHODS
from promptcl.methods.osf import OsfSpec, project_factors, reprojection_callback
from promptcl.model.adapters import save_adapter, trainable_adapter
from promptcl.model.modeling import adapter_name, is_chain, load_base_model, load_state
from promptcl.store.integrity import write_manifest
from promptcl.train.data import encode_table
from promptcl.train.trainer import fit
from tests.helpers.stages import FMT, LORA, spec, table

OSF = METHODS["osf"]
PRESERVED = 0.5


def _targets(model) -> dict[str, torch.Tensor]:
    """The targeted weights (q_proj, v_proj) by module name, as fp32 copies."""
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    return {
        name: module.weight.detach().float().clone()
        for name, module in base.named_modules()
        if name.endswith(("q_proj", "v_proj")) and hasattr(module, "weight")
    }


def _train_stage(tmp_path, model_dir, tokenizer, previous, stage, label, reproject=True):
    """Stage ``stage`` as the stage recipe trains it: AdamW, the factors re-projected after each
    step (``reproject=False``: PEFT's gradient hooks alone)."""
    model = OSF.build_model(
        model_dir, previous, LORA, stage, osf=OsfSpec(PRESERVED, ("q_proj", "v_proj"))
    )
    assert trainable_adapter(model) == adapter_name(stage)
    examples = encode_table(tokenizer, FMT, table(8, label))
    callbacks = [reprojection_callback()] if reproject else []
    train = spec(batch_size=2, learning_rate=2e-2)
    fit(model, tokenizer, examples, train, tmp_path / f"s{stage}-{reproject}", callbacks)
    out = tmp_path / f"stage_{stage}"
    save_adapter(model, adapter_name(stage), out, str(model_dir))
    write_manifest(out)
    return model, out


@pytest.fixture(scope="module")
def stages(tmp_path_factory, tiny_model_dir, tiny_tokenizer):
    """Two OSF stages on the tiny Llama: the weights before each, after each, and the folders."""
    tmp = tmp_path_factory.mktemp("osf")
    before_1 = _targets(load_base_model(tiny_model_dir))
    model_1, out_1 = _train_stage(tmp, tiny_model_dir, tiny_tokenizer, [], 1, "yes")
    after_1 = _targets(model_1.merge_and_unload())
    model_2, out_2 = _train_stage(tmp, tiny_model_dir, tiny_tokenizer, [out_1], 2, "no")
    after_2 = _targets(model_2.merge_and_unload())
    return {"before": [before_1, after_1], "after": [after_1, after_2], "dirs": [out_1, out_2]}


@pytest.mark.parametrize("stage", [1, 2])
def test_a_stage_keeps_the_preserved_singular_directions_of_every_targeted_weight(stages, stage):
    """For each weight W of the state a stage started from, and each of its top
    ``effective_rank`` singular triplets (u, σ, v): the trained weight W' still maps v to σ·u and
    u back to σ·v (W'v = σu, uᵀW' = σvᵀ), while W' differs from W elsewhere."""
    before, after = stages["before"][stage - 1], stages["after"][stage - 1]
    assert before.keys() == after.keys() and len(before) == 4  # 2 layers × q, v
    changed = 0.0
    for name, w in before.items():
        u, s, vt = torch.linalg.svd(w, full_matrices=False)
        k = int(PRESERVED * min(w.shape))
        w_new = after[name]
        scale = float(s[0])
        assert torch.allclose(w_new @ vt[:k].T, u[:, :k] * s[:k], atol=1e-4 * scale), name
        assert torch.allclose(u[:, :k].T @ w_new, s[:k, None] * vt[:k], atol=1e-4 * scale), name
        changed = max(changed, float((w_new - w).abs().max()) / scale)
    assert changed > 1e-3, "training should have moved the trainable subspace"


def _preserved_error(before: dict, after: dict) -> float:
    """The largest |W'v − σu| over the preserved triplets, relative to σ_max."""
    worst = 0.0
    for name, w in before.items():
        u, s, vt = torch.linalg.svd(w, full_matrices=False)
        k = int(PRESERVED * min(w.shape))
        moved = (after[name] @ vt[:k].T - u[:, :k] * s[:k]).abs().max()
        worst = max(worst, float(moved) / float(s[0]))
    return worst


def test_without_the_reprojection_adamw_moves_the_preserved_directions(
    tmp_path, tiny_model_dir, tiny_tokenizer
):
    """PEFT projects gradients; AdamW's per-coordinate scaling leaves the subspace: this is why
    the stage re-projects the factors after every step."""
    before = _targets(load_base_model(tiny_model_dir))
    model, _ = _train_stage(tmp_path, tiny_model_dir, tiny_tokenizer, [], 1, "yes", False)
    assert _preserved_error(before, _targets(model.merge_and_unload())) > 1e-3


def test_the_reprojection_is_a_projection(tiny_model_dir):
    model = OSF.build_model(tiny_model_dir, [], LORA, 1, osf=OsfSpec(0.5, ("q_proj",)))
    with torch.no_grad():
        for p in (p for p in model.parameters() if p.requires_grad):
            p.add_(torch.randn_like(p))
    project_factors(model)
    once = {n: p.detach().clone() for n, p in model.named_parameters() if p.requires_grad}
    project_factors(model)
    assert all(
        torch.allclose(p, once[n], atol=1e-6) for n, p in model.named_parameters() if n in once
    )
    before = _targets(load_base_model(tiny_model_dir))
    after = {k: v for k, v in _targets(model.merge_and_unload()).items() if k.endswith("q_proj")}
    assert _preserved_error({k: before[k] for k in after}, after) < 1e-5


def test_the_stage_folders_reload_the_state_each_stage_trained(stages, tiny_model_dir):
    """load_state merges the OSF folders in order: the weights equal the trained ones."""
    for k in (1, 2):
        dirs = stages["dirs"][:k]
        assert is_chain(dirs)
        loaded = _targets(load_state(tiny_model_dir, dirs))
        for name, w in stages["after"][k - 1].items():
            assert torch.allclose(loaded[name], w, atol=1e-5), (k, name)


def test_the_adapter_is_peft_s_osf_folder_not_a_lora(stages):
    import json

    folder = stages["dirs"][0]
    cfg = json.loads((folder / "adapter_config.json").read_text())
    assert cfg["peft_type"] == "OSF" and cfg["effective_rank"] == PRESERVED
    from safetensors.torch import load_file

    keys = set(load_file(str(folder / "adapter_model.safetensors")))
    assert keys and all(k.rsplit(".", 1)[-1] in {"U_low", "S_low", "V_low"} for k in keys)


def test_peft_s_unload_between_tasks_would_drop_the_stage_s_training(stages, tiny_model_dir):
    """Why stages merge (merge_and_unload) instead of PEFT's continual-learning example's
    ``unload()``: unloading returns the weights the stage started from."""
    from peft import PeftModel

    model = PeftModel.from_pretrained(load_base_model(tiny_model_dir), str(stages["dirs"][0]))
    unloaded = _targets(model.unload())
    for name, w in stages["before"][0].items():
        assert torch.equal(unloaded[name], w)
        assert not torch.allclose(stages["after"][0][name], w)


def test_a_state_cannot_mix_osf_and_lora_adapters(stages, tmp_path, tiny_model_dir):
    lora = METHODS["inclora"].build_model(tiny_model_dir, [], LORA, 1)
    save_adapter(lora, adapter_name(1), tmp_path / "lora", str(tiny_model_dir))
    assert not is_chain([tmp_path / "lora"])
    with pytest.raises(ValueError, match="mixes OSF and LoRA"):
        is_chain([stages["dirs"][0], tmp_path / "lora"])


def test_the_preserved_rank_per_stage():
    cfg = {"effective_rank": [0.3, 0.5, 0.7], "target_modules": None}
    assert [OsfSpec.from_config(cfg, k).effective_rank for k in (1, 2, 3, 5)] == [
        0.3,
        0.5,
        0.7,
        0.7,  # a short list repeats its last value
    ]
    assert OsfSpec.from_config({"effective_rank": 8}, 1).effective_rank == 8
    assert OsfSpec.from_config({"effective_rank": 4.0}, 1).effective_rank == 4


@pytest.mark.parametrize(
    "cfg, key",
    [
        ({"effective_rank": 1.5}, "osf.effective_rank"),
        ({"effective_rank": 0}, "osf.effective_rank"),
        ({"effective_rank": []}, "osf.effective_rank"),
        ({"effective_rank": "half"}, "osf.effective_rank"),
        ({"effective_rank": 0.5, "rank": 4}, "unknown keys"),
    ],
)
def test_osf_config_errors_name_the_key(cfg, key):
    with pytest.raises(ValueError, match=key):
        OsfSpec.from_config(cfg, 1)


def test_osf_declares_a_chain_of_its_own_stages_and_refuses_vllm_and_zero3():
    from tests.helpers import REPO

    assert OSF.state_before(3) == [1, 2] and OSF.state_after(3) == [1, 2, 3]
    assert not OSF.first_stage_is_shared({})
    with pytest.raises(ValueError, match="generation.engine"):
        OSF.check_config({"osf": {"effective_rank": 0.5}, "generation": {"engine": "vllm"}})
    OSF.check_config({"osf": {"effective_rank": 0.5}, "generation": {"engine": "transformers"}})
    with pytest.raises(ValueError, match="ZeRO-3"):
        OSF.check_launch(SimpleNamespace(deepspeed=str(REPO / "config/deepspeed/zero3.json")))


def test_osf_stages_train_at_their_own_learning_rate(tmp_path, tiny_model_dir):
    from tests.helpers.stages import stage_job

    own = {"osf": {"effective_rank": 0.5, "learning_rate": 2e-5}}
    assert stage_job(tmp_path / "a", tiny_model_dir, "osf", own).train_spec(1).learning_rate == 2e-5
    shared = {"osf": {"effective_rank": 0.5, "learning_rate": None}}
    job = stage_job(tmp_path / "b", tiny_model_dir, "osf", shared)
    assert job.train_spec(1).learning_rate == job.training["learning_rate"]
    inclora = stage_job(tmp_path / "c", tiny_model_dir, "inclora", own)
    assert inclora.train_spec(1).learning_rate == inclora.training["learning_rate"]
    with pytest.raises(ValueError, match="osf.learning_rate"):
        OsfSpec.from_config({"effective_rank": 0.5, "learning_rate": 0}, 1)
