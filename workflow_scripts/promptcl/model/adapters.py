"""The LoRA a stage trains: made new or continued, the only trainable weights, saved alone.

The methods (:mod:`promptcl.methods`) build their stage models from these pieces; loading a
finished state for evaluation is :func:`promptcl.model.modeling.load_state`.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

from promptcl.model.modeling import adapter_name, attach_adapters
from promptcl.store.integrity import verify_dir
from promptcl.train.specs import LoraSpec

#: where PEFT writes inside the adapter folder before its files are moved up
SCRATCH = ".peft-save"


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
    """The one PEFT adapter whose parameters train (a LoRA's, or OSF's SVD factors)."""
    trainable = [n for n, p in model.named_parameters() if p.requires_grad]
    names = {a for a in getattr(model, "peft_config", {}) if any(f".{a}." in n for n in trainable)}
    if len(names) != 1:
        raise RuntimeError(f"expected exactly one trainable adapter, found {sorted(names)}")
    return names.pop()


def save_adapter(
    model, name: str, out_dir: Path, base_model_path: str, state_dict: dict | None = None
) -> None:
    """Write only the new stage's LoRA into ``out_dir`` as a standard PEFT folder
    (``PeftModel.from_pretrained``). ``state_dict``: weights gathered from DeepSpeed ZeRO-3
    shards (the model's own are empty).

    Not atomic on its own: the stage recipe saves into the folder
    :func:`promptcl.store.integrity.staged_dir` builds and renames into place once the stage
    record and a method's files are written beside the adapter (one atomic layer, so a killed
    save leaves only that staging folder, which the next attempt clears)."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    scratch = out_dir / SCRATCH
    shutil.rmtree(scratch, ignore_errors=True)
    model.save_pretrained(scratch, selected_adapters=[name], state_dict=state_dict)
    # PEFT writes a named adapter into a subfolder of its own (and a model card beside it)
    src = scratch / name if (scratch / name).is_dir() else scratch
    cfg_path = src / "adapter_config.json"
    cfg = json.loads(cfg_path.read_text())
    cfg["base_model_name_or_path"] = base_model_path
    cfg_path.write_text(json.dumps(cfg, indent=2, sort_keys=True))
    for item in list(src.iterdir()):
        item.rename(out_dir / item.name)
    shutil.rmtree(scratch)
