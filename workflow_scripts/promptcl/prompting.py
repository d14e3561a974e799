"""Prompt assembly and tokenisation with answer-only loss masks.

The same encoding serves training (labels), prompt scoring (answer-token cross-entropy) and
generation (prompt ids only), so the model is always conditioned on exactly the tokens it was
trained on: prompt and answer are tokenised separately and concatenated.
"""

from __future__ import annotations

import string
from dataclasses import dataclass

IGNORE_INDEX = -100
TEMPLATE_FIELDS = {"instruction", "input", "suffix"}


@dataclass(frozen=True)
class PromptFormat:
    """How a task instance becomes a user turn (``config.yaml: prompt``)."""

    template: str = "{instruction}\n\n{input}\n\n{suffix}"
    system_prompt: str | None = None  # None: the chat template's own default (if any)
    use_chat_template: bool = True

    def __post_init__(self) -> None:
        fields = {f for _, f, _, _ in string.Formatter().parse(self.template) if f is not None}
        unknown = fields - TEMPLATE_FIELDS
        if unknown or "input" not in fields:
            raise ValueError(
                f"prompt.template: fields must be among {sorted(TEMPLATE_FIELDS)} and include "
                f"{{input}}; got {sorted(fields)}"
            )

    @classmethod
    def from_config(cls, cfg: dict) -> PromptFormat:
        return cls(
            template=cfg.get("template", cls.template),
            system_prompt=cfg.get("system_prompt"),
            use_chat_template=cfg.get("use_chat_template", True),
        )


def render_user_turn(fmt: PromptFormat, instruction: str, input: str, suffix: str) -> str:
    """Fill the template; empty parts leave no stray blank lines."""
    text = fmt.template.format(instruction=instruction, input=input, suffix=suffix)
    while "\n\n\n" in text:
        text = text.replace("\n\n\n", "\n\n")
    return text.strip()


def _has_chat_template(tokenizer, fmt: PromptFormat) -> bool:
    return fmt.use_chat_template and bool(getattr(tokenizer, "chat_template", None))


def _messages(fmt: PromptFormat, user: str) -> list[dict]:
    msgs = [] if fmt.system_prompt is None else [{"role": "system", "content": fmt.system_prompt}]
    return msgs + [{"role": "user", "content": user}]


def prompt_text(tokenizer, fmt: PromptFormat, user: str) -> str:
    """Everything the model sees before its answer."""
    if _has_chat_template(tokenizer, fmt):
        return tokenizer.apply_chat_template(
            _messages(fmt, user), tokenize=False, add_generation_prompt=True
        )
    return user + "\n"


def answer_text(tokenizer, fmt: PromptFormat, user: str, answer: str) -> str:
    """The continuation the model must produce, ending with its end-of-turn token.

    Without that token as a target the trained model never stops generating.
    """
    eos = tokenizer.eos_token or ""
    if not _has_chat_template(tokenizer, fmt):
        return answer + eos
    prompt = prompt_text(tokenizer, fmt, user)
    full = tokenizer.apply_chat_template(
        _messages(fmt, user) + [{"role": "assistant", "content": answer}], tokenize=False
    )
    if not full.startswith(prompt):
        raise ValueError(
            "the chat template renders the assistant turn in a way that does not extend the "
            "generation prompt; set prompt.use_chat_template: false for this model"
        )
    cont = full[len(prompt) :]
    if eos and eos in cont:
        cont = cont[: cont.rindex(eos) + len(eos)]
    elif eos:
        cont = cont.rstrip() + eos
    return cont


@dataclass
class Encoded:
    input_ids: list[int]
    labels: list[int]
    prompt_len: int
    truncated: bool


def _ids(tokenizer, text: str, special: bool) -> list[int]:
    return list(tokenizer(text, add_special_tokens=special)["input_ids"])


def encode(
    tokenizer,
    fmt: PromptFormat,
    instruction: str,
    input: str,
    suffix: str,
    answer: str | None,
    max_length: int,
) -> Encoded:
    """Tokenise one instance; ``answer=None`` encodes the prompt only (for generation).

    When too long, the task *input* is shortened (never the instruction, suffix or answer), so
    the prompt under study is always seen whole. ``max_length`` counts prompt + answer tokens.
    """
    special = not _has_chat_template(tokenizer, fmt)
    truncated = False
    for _ in range(4):
        user = render_user_turn(fmt, instruction, input, suffix)
        prompt_ids = _ids(tokenizer, prompt_text(tokenizer, fmt, user), special)
        answer_ids = (
            []
            if answer is None
            else _ids(tokenizer, answer_text(tokenizer, fmt, user, answer), False)
        )
        excess = len(prompt_ids) + len(answer_ids) - max_length
        if excess <= 0:
            break
        input_ids = _ids(tokenizer, input, False)
        keep = len(input_ids) - excess - 4
        if keep <= 0:
            raise ValueError(
                f"prompt.max_length={max_length} leaves no room for the input: instruction, suffix "
                f"and answer take {len(prompt_ids) + len(answer_ids) - len(input_ids)} tokens"
            )
        input = tokenizer.decode(input_ids[:keep])
        truncated = True
    else:  # pragma: no cover - decode/encode round trips converge within a couple of tries
        raise ValueError("could not fit the instance into prompt.max_length")
    return Encoded(
        input_ids=prompt_ids + answer_ids,
        labels=[IGNORE_INDEX] * len(prompt_ids) + answer_ids,
        prompt_len=len(prompt_ids),
        truncated=truncated,
    )


def stop_token_ids(tokenizer) -> list[int]:
    """Token ids that end an answer: eos plus a chat template's end-of-turn marker if distinct."""
    ids = {tokenizer.eos_token_id}
    for tok in ("<|im_end|>", "<|eot_id|>", "<end_of_turn>", "<|end|>"):
        tid = tokenizer.convert_tokens_to_ids(tok)
        if isinstance(tid, int) and tid != tokenizer.unk_token_id and tid is not None:
            ids.add(tid)
    return sorted(i for i in ids if i is not None)
