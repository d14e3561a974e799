"""Model preparation: the real embedded model converts and generates; other sources fail clearly."""

from __future__ import annotations

import json

import pytest
import torch

from promptcl.model.devices import resolve_precision
from promptcl.model.modeling import (
    ModelSourceError,
    ModelSpec,
    load_state,
    load_tokenizer,
    locate_package_gguf,
    prepare_model,
)
from promptcl.prompts.prompting import PromptFormat, encode


@pytest.mark.slow
def test_embedded_model_converts_and_generates(tmp_path):
    out = tmp_path / "hf"
    manifest = prepare_model(ModelSpec(), out)
    assert manifest["model_type"] == "llama" and "model.safetensors" in manifest["files"]
    config = json.loads((out / "config.json").read_text())
    assert "quantization_config" not in config, "a plain folder, not a GGUF-quantised one"
    tokenizer = load_tokenizer(out)
    model = load_state(out, precision="fp32")
    assert sum(p.numel() for p in model.parameters()) > 100_000_000
    prompt = encode(
        tokenizer, PromptFormat(), "Answer with one word.", "What color is the sky?", "", None
    )
    with torch.inference_mode():
        ids = torch.tensor([prompt.input_ids])
        out_ids = model.generate(input_ids=ids, max_new_tokens=8, do_sample=False)
    text = tokenizer.decode(out_ids[0, ids.shape[1] :], skip_special_tokens=True)
    assert text.strip(), "the converted instruct model answers"


def test_local_source_links_instead_of_copying(tmp_path, tiny_model_dir):
    out = tmp_path / "hf"
    manifest = prepare_model(ModelSpec(source="local", path=str(tiny_model_dir)), out)
    assert (out / "config.json").is_symlink()
    assert manifest["origin"] == str(tiny_model_dir.resolve())
    assert load_state(out).config.num_hidden_layers == 2


def test_sources_fail_with_the_config_key(tmp_path):
    with pytest.raises(ModelSourceError, match="model.path"):
        prepare_model(ModelSpec(source="local", path=str(tmp_path / "missing")), tmp_path / "o")
    (tmp_path / "empty").mkdir()
    with pytest.raises(ModelSourceError, match="model.path.*no config.json"):
        prepare_model(ModelSpec(source="local", path=str(tmp_path / "empty")), tmp_path / "o")
    with pytest.raises(ModelSourceError, match="model.path: hub id 'nobody/no-such-model'"):
        prepare_model(ModelSpec(source="hub", path="nobody/no-such-model"), tmp_path / "o")
    with pytest.raises(ModelSourceError, match="model.package.module"):
        locate_package_gguf("no_such_package_xyz", "x.gguf")


def test_precision_resolution():
    assert resolve_precision("fp32") == "fp32" and resolve_precision("bf16") == "bf16"
    assert resolve_precision("auto") in ("fp32", "bf16")
    with pytest.raises(ValueError, match="model.precision"):
        resolve_precision("fp8")


def test_cpu_training_attention_is_exact_for_short_and_long_keys(tiny_model_dir, monkeypatch):
    """``attn_implementation: auto`` trains on a CPU with promptcl's length dispatch: eager
    attention for short keys, SDPA beyond EAGER_MAX_KEYS; both give the eager and SDPA
    logits of a left-padded batch."""
    import torch

    from promptcl.model import attention
    from promptcl.model.batching import left_pad, positions
    from promptcl.model.devices import resolve_attention
    from promptcl.model.modeling import load_state, use_attention

    assert resolve_attention("cpu_dispatch", training=True, device_type="cpu") == attention.NAME
    assert resolve_attention("auto", training=True, device_type="cpu") == attention.NAME
    assert resolve_attention("auto", training=False, device_type="cpu") == "sdpa"
    assert resolve_attention("auto", training=True, device_type="cuda") == "sdpa"
    assert resolve_attention("eager", training=False) == "eager"
    with pytest.raises(ValueError, match="model.attn_implementation"):
        resolve_attention("flash", training=True)
    model = load_state(tiny_model_dir)
    ids, mask = left_pad([[5, 6, 7, 8, 9, 10, 11, 12], [13, 14, 15]], 0)

    def logits(name: str) -> torch.Tensor:
        use_attention(model, name, training=True)
        with torch.no_grad():
            return model(input_ids=ids, attention_mask=mask, position_ids=positions(mask)).logits

    eager, sdpa = logits("eager"), logits("sdpa")
    real = mask.bool()
    short = logits("cpu_dispatch")
    monkeypatch.setattr(attention, "EAGER_MAX_KEYS", 4)  # the same batch through SDPA
    long = logits("cpu_dispatch")
    for ours in (short, long):
        torch.testing.assert_close(ours[real], eager[real], rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(ours[real], sdpa[real], rtol=1e-5, atol=1e-5)
