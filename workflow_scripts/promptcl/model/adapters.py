"""The LoRA a stage trains: made new or continued, the only trainable weights, saved alone.

The methods (:mod:`promptcl.methods`) build their stage models from these pieces; loading a
finished state for evaluation is :func:`promptcl.model.modeling.load_state`.
"""

from __future__ import annotations

import json
import tempfile
from pathlib import Path

from promptcl.model.modeling import adapter_name, attach_adapters
from promptcl.store.integrity import replace_dir, verify_dir
from promptcl.train.specs import LoraSpec


def new_lora(model, lora: LoraSpec, stage: int, previous: list[Path] | None = None):
    """``model`` (a base model) with the frozen LoRAs of ``previous`` (stages 1..k-1, all
    active) and a new LoRA for stage k on top; only the new one trains."""
    from peft import get_peft_model

    name = adapter_name(stage)
    if not previous:
        model = get_peft_model(model, lora.peft_config(), adapter_name=name)
    else:
        model = attach_adapters(model, previous)
        model.add_adapter(name, lora.peft_config())
        model.base_model.set_adapter([adapter_name(i) for i in range(1, stage + 1)])
    return train_only(model, name)


def continued_lora(model, previous: Path, stage: int):
    """``model`` with the LoRA of ``previous`` loaded trainable, to continue as stage k's."""
    from peft import PeftModel

    verify_dir(previous)
    name = adapter_name(stage)
    model = PeftModel.from_pretrained(model, str(previous), adapter_name=name, is_trainable=True)
    return train_only(model, name)


def train_only(model, name: str):
    for pname, param in model.named_parameters():
        param.requires_grad_(f".{name}." in pname)
    return model


def trainable_adapter(model) -> str:
    names = {
        n.split(".lora_")[1].split(".")[1] for n, p in model.named_parameters() if p.requires_grad
    }
    if len(names) != 1:
        raise RuntimeError(f"expected exactly one trainable adapter, found {sorted(names)}")
    return names.pop()


def save_adapter(
    model, name: str, out_dir: Path, base_model_path: str, state_dict: dict | None = None
) -> None:
    """Write only the new stage's LoRA as a standard PEFT folder (``PeftModel.from_pretrained``).

    Written under a temporary name beside ``out_dir`` and renamed into place, so a failed save
    (a full disk) never leaves a half-written ``out_dir``. ``state_dict``: weights gathered from
    DeepSpeed ZeRO-3 shards (the model's own are empty)."""
    out_dir = Path(out_dir)
    with tempfile.TemporaryDirectory(dir=out_dir.parent, prefix=f".{out_dir.name}.tmp-") as tmp:
        model.save_pretrained(tmp, selected_adapters=[name], state_dict=state_dict)
        src = Path(tmp) / name if (Path(tmp) / name).is_dir() else Path(tmp)
        cfg_path = src / "adapter_config.json"
        cfg = json.loads(cfg_path.read_text())
        cfg["base_model_name_or_path"] = base_model_path
        cfg_path.write_text(json.dumps(cfg, indent=2, sort_keys=True))
        if src == Path(tmp):  # the temporary folder itself: move its content into a subfolder
            src = Path(tmp) / "adapter"
            src.mkdir()
            for item in Path(tmp).iterdir():
                if item != src:
                    item.rename(src / item.name)
        replace_dir(src, out_dir)
