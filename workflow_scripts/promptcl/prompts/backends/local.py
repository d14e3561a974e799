"""``prompts.backend: local``: a local instruct model through transformers ``generate`` (the
workflow's own model unless prompts.local.model names another), on a compute node."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from promptcl.prompts.backends.base import GeneratingBackend, ParaphraseJob, PlanView
from promptcl.prompts.paraphrase import Request
from promptcl.prompts.prompting import DEFAULT_CHAT_TEMPLATE_KWARGS


class Local(GeneratingBackend):
    name = "local"
    on_host = False

    def threads(self, config: dict) -> int:
        return config["compute"]["threads"]

    def inputs(self, plan: PlanView, task: str) -> dict[str, str]:
        from promptcl.store import paths

        inputs = super().inputs(plan, task)
        if not plan.prompts["local"]["model"]:
            inputs["model"] = paths.MODEL_DIR
        return inputs

    def check(self, plan: PlanView) -> None:
        from promptcl.errors import hf_folder

        super().check(plan)
        if plan.prompts["local"].get("model"):
            hf_folder("prompts.local.model", plan.prompts["local"]["model"], plan.workflow_dir)

    def build(self, job: ParaphraseJob) -> LocalGenerator:
        from promptcl.model.devices import resolve_precision

        o, model = job.options["local"], job.model
        folder = Path(o["model"]) if o.get("model") else Path(job.inputs["model"])
        return LocalGenerator(
            model_dir=folder,
            model=o.get("model") or model["name"],
            temperature=o["temperature"],
            top_p=o["top_p"],
            max_new_tokens=o["max_new_tokens"],
            precision=resolve_precision(model["precision"]),
            trust_remote_code=model["trust_remote_code"],
            chat_template_kwargs=tuple(sorted((model["chat_template_kwargs"] or {}).items())),
        )


@dataclass
class LocalGenerator:
    """A local instruct model through transformers ``generate``, sampled with a per-request seed."""

    model_dir: Path
    model: str
    temperature: float = 1.0
    top_p: float = 0.95
    max_new_tokens: int = 256
    precision: str = "fp32"
    trust_remote_code: bool = False
    #: the workflow's prompt.chat_template_kwargs (e.g. thinking off for a Qwen3 paraphraser)
    chat_template_kwargs: tuple[tuple[str, object], ...] = tuple(
        sorted(DEFAULT_CHAT_TEMPLATE_KWARGS.items())
    )
    name: str = "local"

    def __post_init__(self) -> None:
        from promptcl.model.devices import default_device
        from promptcl.model.modeling import load_state, load_tokenizer

        self._tokenizer = load_tokenizer(Path(self.model_dir), self.trust_remote_code)
        self._model = load_state(Path(self.model_dir), (), self.precision, self.trust_remote_code)
        self._model.to(default_device())

    def options(self) -> dict[str, Any]:
        return {
            "temperature": self.temperature,
            "top_p": self.top_p,
            "max_new_tokens": self.max_new_tokens,
            "precision": self.precision,
            "chat_template_kwargs": dict(self.chat_template_kwargs),
        }

    def complete(self, request: Request) -> str:
        import torch

        from promptcl.prompts.prompting import (
            PromptFormat,
            prompt_text,
            stop_token_ids,
            strip_reasoning,
        )

        fmt = PromptFormat(chat_template_kwargs=tuple(self.chat_template_kwargs))
        text = prompt_text(self._tokenizer, fmt, request.text)
        ids = self._tokenizer(text, add_special_tokens=False, return_tensors="pt")
        device = next(self._model.parameters()).device
        digest = hashlib.sha256(f"{request.seed}:{request.index}".encode()).digest()
        generator_seed = int.from_bytes(digest[:8], "little") % (2**63)
        torch.manual_seed(generator_seed)
        with torch.inference_mode():
            out = self._model.generate(
                input_ids=ids["input_ids"].to(device),
                attention_mask=ids["attention_mask"].to(device),
                do_sample=True,
                temperature=self.temperature,
                top_p=self.top_p,
                max_new_tokens=self.max_new_tokens,
                eos_token_id=stop_token_ids(self._tokenizer, fmt),
                pad_token_id=self._tokenizer.pad_token_id,
            )
        reply = self._tokenizer.decode(
            out[0, ids["input_ids"].shape[1] :], skip_special_tokens=True
        )
        return strip_reasoning(reply)
