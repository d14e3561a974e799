"""Paraphrase backends: an OpenAI-compatible endpoint, or a local instruct model.

The API key is read from the environment variable *named* in the config, at the moment the
client is built; it is never stored on the backend, in options, cache records or messages.
"""

from __future__ import annotations

import hashlib
import logging
import os
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from promptcl.prompts.paraphrase import FatalBackendError, Request, RequestFailed
from promptcl.prompts.prompting import DEFAULT_CHAT_TEMPLATE_KWARGS

log = logging.getLogger(__name__)


@dataclass
class OpenAIBackend:
    """Chat completions through the ``openai`` client (retries with backoff come from it).

    The client (and with it the API key) is made on the first request that is not cached, so a
    rerun whose replies are all cached needs no key; a missing key stops that first request.
    """

    base_url: str
    model: str
    api_key_env: str = "OPENAI_API_KEY"
    temperature: float = 1.0
    max_tokens: int = 512
    timeout: float = 60.0
    max_retries: int = 5
    name: str = "openai"

    def __post_init__(self) -> None:
        self._client = None
        self._lock = threading.Lock()

    def _connect(self):
        import openai

        with self._lock:
            if self._client is None:
                key = os.environ.get(self.api_key_env)
                if not key:
                    raise FatalBackendError(
                        f"prompts.openai.api_key_env: environment variable {self.api_key_env} "
                        "is not set"
                    )
                self._client = openai.OpenAI(
                    api_key=key,
                    base_url=self.base_url,
                    timeout=self.timeout,
                    max_retries=self.max_retries,
                )
                for noisy in ("httpx", "httpcore", "httpx2", "httpcore2"):
                    logging.getLogger(noisy).setLevel(logging.WARNING)
            return self._client

    def options(self) -> dict[str, Any]:
        return {
            "base_url": self.base_url,
            "temperature": self.temperature,
            "max_tokens": self.max_tokens,
        }

    def complete(self, request: Request) -> str:
        import openai

        client = self._connect()
        try:
            response = client.chat.completions.create(
                model=self.model,
                messages=[{"role": "user", "content": request.text}],
                temperature=self.temperature,
                max_tokens=self.max_tokens,
                seed=request.seed * 1_000_003 + request.index,
            )
        except (openai.AuthenticationError, openai.PermissionDeniedError) as err:
            raise FatalBackendError(
                f"{self.base_url} refused the credentials from ${self.api_key_env} "
                f"(HTTP {err.status_code}); check the key and its permissions"
            ) from None
        except openai.NotFoundError as err:
            raise FatalBackendError(
                f"{self.base_url}: model '{self.model}' or endpoint not found (HTTP "
                f"{err.status_code}); check prompts.openai.model and prompts.openai.base_url"
            ) from None
        except openai.BadRequestError as err:
            raise FatalBackendError(
                f"{self.base_url} rejected the request: {err.message}"
            ) from None
        except (openai.APIConnectionError, openai.APIStatusError) as err:
            # timeouts, connection errors, 429 and 5xx, after the client's own retries
            raise RequestFailed(
                f"{type(err).__name__} after {self.max_retries} retries: {_short(err)}"
            ) from None
        except openai.APIResponseValidationError as err:
            raise RequestFailed(f"malformed reply: {_short(err)}") from None
        except ValueError as err:  # a JSON content-type whose body is not JSON (JSONDecodeError)
            raise RequestFailed(f"malformed reply: body is not JSON ({_short(err)})") from None
        choices = getattr(response, "choices", None)
        if not isinstance(choices, list) or not choices:
            raise RequestFailed("malformed reply: no choices")
        content = getattr(getattr(choices[0], "message", None), "content", None)
        if not isinstance(content, str):
            raise RequestFailed("malformed reply: no message content")
        return content


def _short(err: Exception) -> str:
    text = str(err).replace("\n", " ")
    return text[:200]


@dataclass
class LocalBackend:
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


def backend_from_config(
    cfg: dict,
    model_dir: Path | None,
    model_name: str,
    precision: str,
    trust_remote_code: bool,
    chat_template_kwargs: dict | None = None,
):
    """The configured generating backend (``prompts.backend`` = openai or local)."""
    name = cfg["backend"]
    if name == "openai":
        o = cfg["openai"]
        return OpenAIBackend(
            base_url=o["base_url"],
            model=o["model"],
            api_key_env=o["api_key_env"],
            temperature=o["temperature"],
            max_tokens=o["max_tokens"],
            timeout=o["timeout"],
            max_retries=o["max_retries"],
        )
    if name == "local":
        o = cfg["local"]
        folder = Path(o["model"]) if o.get("model") else model_dir
        if folder is None:
            raise ValueError("prompts.local.model: no model folder given")
        return LocalBackend(
            model_dir=folder,
            model=o.get("model") or model_name,
            temperature=o["temperature"],
            top_p=o["top_p"],
            max_new_tokens=o["max_new_tokens"],
            precision=precision,
            trust_remote_code=trust_remote_code,
            chat_template_kwargs=tuple(sorted((chat_template_kwargs or {}).items())),
        )
    raise ValueError(f"prompts.backend: '{name}' does not generate (expected openai or local)")
