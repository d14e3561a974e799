"""Stacked LoRAs as one standard PEFT LoRA: the state after stage k of IncLoRA, O-LoRA and LwF
(the frozen LoRAs of stages 1..k, all active) for engines that apply exactly one LoRA per
request (vLLM).

Each stage's LoRA adds s_i·B_i·A_i to a module's weight (s_i = alpha_i / r_i). Concatenating the
A's along the rank (rows) and the s_i·B_i along the rank (columns) gives one LoRA of rank Σ r_i
with scaling 1 (alpha = rank) whose B·A is exactly Σ s_i·B_i·A_i: the same weights up to float
rounding, with each stage's scaling folded into its B block. A module some stage does not adapt
gets no block from it. Pure tensor arithmetic on the saved files (safetensors), in float32.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path

from promptcl.store.integrity import staged_dir

CONFIG = "adapter_config.json"
WEIGHTS = "adapter_model.safetensors"
#: LoRA variants whose update is not s·B·A: their stacks cannot be one plain LoRA
UNSUPPORTED = {"use_dora": True, "use_rslora": True}


class CombineError(ValueError):
    """The adapters cannot be combined exactly into one LoRA (the message says which and why)."""


def _config(adapter: Path) -> dict:
    path = Path(adapter) / CONFIG
    if not path.is_file():
        raise CombineError(f"{adapter}: no {CONFIG} (not a PEFT adapter folder)")
    cfg = json.loads(path.read_text())
    if cfg.get("peft_type") != "LORA":
        raise CombineError(f"{path}: peft_type {cfg.get('peft_type')!r}, only LoRA adapters stack")
    for key, bad in UNSUPPORTED.items():
        if cfg.get(key) == bad:
            raise CombineError(f"{path}: {key} is set; only plain LoRAs (s·B·A) combine exactly")
    if cfg.get("rank_pattern") or cfg.get("alpha_pattern"):
        raise CombineError(f"{path}: per-module rank or alpha patterns are not supported")
    if cfg.get("bias", "none") != "none" or cfg.get("modules_to_save"):
        raise CombineError(f"{path}: biases or modules_to_save cannot be folded into one LoRA")
    return cfg


def _pairs(weights: dict) -> dict[str, tuple]:
    """module prefix -> (A, B) of one adapter's state dict."""
    out = {}
    for key, tensor in weights.items():
        if ".lora_A." in key:
            prefix = key.split(".lora_A.")[0]
            b_key = key.replace(".lora_A.", ".lora_B.")
            if b_key not in weights:
                raise CombineError(f"{key} has no lora_B partner")
            out[prefix] = (tensor, weights[b_key])
        elif ".lora_B." not in key:
            raise CombineError(f"weight {key} is neither lora_A nor lora_B")
    return out


def combine_loras(adapters: Sequence[Path], out_dir: Path) -> dict:
    """Write the one LoRA equal to ``adapters`` active together into ``out_dir`` (a standard
    PEFT folder); returns its summary (rank, modules, stages' ranks and scalings)."""
    import torch
    from safetensors.torch import load_file, save_file

    if not adapters:
        raise CombineError("no adapters to combine")
    configs = [_config(a) for a in adapters]
    bases = {c.get("base_model_name_or_path") for c in configs}
    if len(bases) > 1:
        raise CombineError(f"the adapters were trained on different base models: {sorted(bases)}")
    per_stage = [_pairs(load_file(str(Path(a) / WEIGHTS))) for a in adapters]
    scalings = [float(c["lora_alpha"]) / int(c["r"]) for c in configs]
    ranks = [int(c["r"]) for c in configs]
    rank = sum(ranks)
    modules = sorted({m for pairs in per_stage for m in pairs})
    combined = {}
    for module in modules:
        a_blocks, b_blocks = [], []
        reference = next(pairs[module] for pairs in per_stage if module in pairs)
        in_dim, out_dim = reference[0].shape[1], reference[1].shape[0]
        for pairs, r, s in zip(per_stage, ranks, scalings, strict=True):
            if module in pairs:
                a, b = pairs[module]
                if a.shape != (r, in_dim) or b.shape != (out_dim, r):
                    raise CombineError(
                        f"{module}: shapes {tuple(a.shape)} and {tuple(b.shape)} do not match "
                        f"rank {r} of a {in_dim}→{out_dim} module"
                    )
                a_blocks.append(a.float())
                b_blocks.append(s * b.float())
            else:  # this stage does not adapt the module: a zero block keeps the rank aligned
                a_blocks.append(torch.zeros(r, in_dim))
                b_blocks.append(torch.zeros(out_dim, r))
        combined[f"{module}.lora_A.weight"] = torch.cat(a_blocks, dim=0).contiguous()
        combined[f"{module}.lora_B.weight"] = torch.cat(b_blocks, dim=1).contiguous()
    targets = sorted({t for c in configs for t in c["target_modules"]})
    config = {
        **configs[-1],
        "r": rank,
        "lora_alpha": rank,  # scaling 1: each stage's own scaling is folded into its B block
        "lora_dropout": 0.0,
        "target_modules": targets,
        "inference_mode": True,
    }
    # built under a temporary name, recorded by a manifest and renamed once complete
    with staged_dir(out_dir) as folder:
        save_file(combined, str(folder / WEIGHTS))
        (folder / CONFIG).write_text(json.dumps(config, indent=2, sort_keys=True))
    return {"rank": rank, "ranks": ranks, "scalings": scalings, "modules": len(modules)}
