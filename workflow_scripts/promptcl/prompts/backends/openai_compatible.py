"""``prompts.backend: openai``: any OpenAI-compatible chat-completions endpoint.

The API key is read from the environment variable *named* in the config, at the moment the
client is built; it is never stored on the client, in options, cache records or messages. The
job runs on the submitting host (compute nodes often have no internet).
"""

from __future__ import annotations

import logging
import os
import threading
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from promptcl.prompts.backends.base import GeneratingBackend, ParaphraseJob, PlanView
from promptcl.prompts.paraphrase import FatalBackendError, Request, RequestFailed

log = logging.getLogger(__name__)


class OpenAI(GeneratingBackend):
    name = "openai"
    on_host = True

    def workers(self, options: Mapping[str, Any]) -> int:
        return options["openai"]["max_concurrent"]

    def check(self, plan: PlanView) -> None:
        """The template, and the API key when a candidate table still has to be made (a rerun
        of finished tables needs no key)."""
        super().check(plan)
        check_api_key(plan.prompts, [Path(plan.candidates_of(t)) for t in plan.prompt_tasks])

    def build(self, job: ParaphraseJob) -> OpenAIClient:
        o = job.options["openai"]
        return OpenAIClient(
            base_url=o["base_url"],
            model=o["model"],
            api_key_env=o["api_key_env"],
            temperature=o["temperature"],
            max_tokens=o["max_tokens"],
            timeout=o["timeout"],
            max_retries=o["max_retries"],
        )


def check_api_key(prompts: dict, needed) -> None:
    """A missing API key stops the workflow before any job runs when a candidate table still has
    to be made."""
    from promptcl.errors import ConfigError

    variable = prompts["openai"]["api_key_env"]
    if os.environ.get(variable):
        return
    missing = sorted(str(p) for p in needed if not Path(p).is_file())
    if missing:
        raise ConfigError(
            f"prompts.openai.api_key_env: environment variable {variable} is not set, and the "
            f"openai backend still has to make {missing[:3]}{' …' if len(missing) > 3 else ''} "
            f"(export {variable}=… before running)"
        )


@dataclass
class OpenAIClient:
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
