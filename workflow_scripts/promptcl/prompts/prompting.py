"""Prompt assembly and tokenisation with answer-only loss masks.

The same encoding serves training (labels), prompt scoring (answer-token cross-entropy) and
generation (prompt ids only), so the model is always conditioned on exactly the tokens it was
trained on: the prompt is the chat template's *generation prompt*, the target is the answer plus
the template's end-of-turn token, and the two are tokenised separately and concatenated.
"""

from __future__ import annotations

import re
import string
from dataclasses import dataclass, field

IGNORE_INDEX = -100
TEMPLATE_FIELDS = {"instruction", "input", "suffix"}
#: What a thinking template expects unless the config says otherwise (Qwen3: no <think> block).
DEFAULT_CHAT_TEMPLATE_KWARGS = {"enable_thinking": False}
#: Reasoning blocks some models emit before their answer; removed before scoring.
REASONING_BLOCKS = (("<think>", "</think>"),)


@dataclass(frozen=True)
class PromptFormat:
    """How a task instance becomes the model's input (``config.yaml: prompt``)."""

    template: str = "{instruction}\n\n{input}\n\n{suffix}"
    system_prompt: str | None = None  # None: the chat template's own default (if any)
    use_chat_template: bool = True
    #: extra variables of every ``apply_chat_template`` call, e.g. ``enable_thinking``
    chat_template_kwargs: tuple[tuple[str, object], ...] = field(
        default=tuple(sorted(DEFAULT_CHAT_TEMPLATE_KWARGS.items()))
    )
    #: the task input is cut to this many tokens (of its own tokenisation), the same budget in
    #: training, scoring and evaluation whatever the instruction or the answer
    max_input_tokens: int = 1024

    def __post_init__(self) -> None:
        try:
            fields = {f for _, f, _, _ in string.Formatter().parse(self.template) if f is not None}
        except ValueError as err:  # an unmatched brace
            raise ValueError(
                f"prompt.template: {err}; write literal braces doubled ({{{{ }}}})"
            ) from None
        unknown = fields - TEMPLATE_FIELDS
        if unknown or "input" not in fields:
            raise ValueError(
                f"prompt.template: fields must be among {sorted(TEMPLATE_FIELDS)} and include "
                f"{{input}}; got {sorted(fields)}"
            )
        if self.max_input_tokens < 1:
            raise ValueError(f"prompt.max_input_tokens must be >= 1, got {self.max_input_tokens}")

    @property
    def template_kwargs(self) -> dict:
        return dict(self.chat_template_kwargs)

    @classmethod
    def from_config(cls, cfg: dict) -> PromptFormat:
        kwargs = cfg.get("chat_template_kwargs")
        kwargs = DEFAULT_CHAT_TEMPLATE_KWARGS if kwargs is None else kwargs
        return cls(
            template=cfg.get("template", cls.template),
            system_prompt=cfg.get("system_prompt"),
            use_chat_template=cfg.get("use_chat_template", True),
            chat_template_kwargs=tuple(sorted(dict(kwargs).items())),
            max_input_tokens=int(cfg.get("max_input_tokens", cls.max_input_tokens)),
        )


def render_user_turn(fmt: PromptFormat, instruction: str, input: str, suffix: str) -> str:
    """Fill the template; empty parts leave no stray blank lines."""
    text = fmt.template.format(instruction=instruction, input=input, suffix=suffix)
    while "\n\n\n" in text:
        text = text.replace("\n\n\n", "\n\n")
    return text.strip()


def has_chat_template(tokenizer, fmt: PromptFormat) -> bool:
    return fmt.use_chat_template and bool(getattr(tokenizer, "chat_template", None))


def _messages(fmt: PromptFormat, user: str) -> list[dict]:
    msgs = [] if fmt.system_prompt is None else [{"role": "system", "content": fmt.system_prompt}]
    return msgs + [{"role": "user", "content": user}]


def _render(tokenizer, fmt: PromptFormat, messages: list[dict], generation: bool) -> str:
    return tokenizer.apply_chat_template(
        messages, tokenize=False, add_generation_prompt=generation, **fmt.template_kwargs
    )


def prompt_text(tokenizer, fmt: PromptFormat, user: str) -> str:
    """Everything the model sees before its answer: the template's generation prompt."""
    if has_chat_template(tokenizer, fmt):
        return _render(tokenizer, fmt, _messages(fmt, user), generation=True)
    return user + "\n"


def answer_text(tokenizer, fmt: PromptFormat, user: str, answer: str) -> str:
    """The continuation the model must produce: the answer and the end-of-turn token, nothing else.

    Rendered by the chat template itself (so a template that strips the answer or puts a space
    before it is followed), then checked: only whitespace may come between the generation prompt
    and the answer (a Qwen3 template with thinking on puts an empty ``<think>`` block there, which
    would become a training target and part of every scored loss), and whatever the template puts
    after the answer is reduced to its end-of-turn token (its trailing newline or space is not a
    target). Without that token as a target the trained model never stops generating.
    """
    eos = tokenizer.eos_token or ""
    if not has_chat_template(tokenizer, fmt):
        return answer + eos
    prompt = prompt_text(tokenizer, fmt, user)
    full = _render(
        tokenizer, fmt, _messages(fmt, user) + [{"role": "assistant", "content": answer}], False
    )
    if not full.startswith(prompt):
        raise ValueError(
            "the chat template renders the assistant turn in a way that does not extend its "
            "generation prompt; set prompt.use_chat_template: false for this model"
        )
    continuation = full[len(prompt) :]
    core = answer.strip()
    at = continuation.find(core)
    if at < 0:
        raise ValueError(
            f"the chat template does not render the answer {core!r} verbatim; "
            "set prompt.use_chat_template: false for this model"
        )
    before, after = continuation[:at], continuation[at + len(core) :]
    if before.strip():
        raise ValueError(
            f"the chat template puts {before!r} between the generation prompt and the answer, so "
            "it would be trained and scored as part of every answer; set "
            "prompt.chat_template_kwargs (e.g. enable_thinking: false for Qwen3) so that it does "
            "not"
        )
    end = after.strip().split()[0] if after.strip() else eos
    return before + core + end


def end_of_turn_token(tokenizer, fmt: PromptFormat) -> str | None:
    """The token that ends an answer under this format (the template's, else eos)."""
    if not has_chat_template(tokenizer, fmt):
        return tokenizer.eos_token
    sample = answer_text(tokenizer, fmt, "x", "y")
    return sample[sample.index("y") + 1 :] or tokenizer.eos_token


@dataclass
class Encoded:
    input_ids: list[int]
    labels: list[int]
    prompt_len: int
    truncated: bool


def _ids(tokenizer, text: str, special: bool) -> list[int]:
    return list(tokenizer(text, add_special_tokens=special)["input_ids"])


def truncate_input(tokenizer, text: str, budget: int) -> tuple[str, bool]:
    """The first ``budget`` tokens of a task input (its own tokenisation), and whether it was cut.

    The budget does not depend on the instruction, the suffix or the answer, so every candidate
    prompt is scored, trained and evaluated on the same part of every input.
    """
    ids = _ids(tokenizer, text, False)
    if len(ids) <= budget:
        return text, False
    return tokenizer.decode(ids[:budget]), True


def encode(
    tokenizer,
    fmt: PromptFormat,
    instruction: str,
    input: str,
    suffix: str,
    answer: str | None,
) -> Encoded:
    """Tokenise one instance; ``answer=None`` encodes the prompt only (for generation).

    The task input is cut to ``fmt.max_input_tokens``; the instruction, suffix and answer never
    are, so the prompt under study is always seen whole.
    """
    special = not has_chat_template(tokenizer, fmt)
    input, truncated = truncate_input(tokenizer, input, fmt.max_input_tokens)
    user = render_user_turn(fmt, instruction, input, suffix)
    prompt_ids = _ids(tokenizer, prompt_text(tokenizer, fmt, user), special)
    answer_ids = (
        [] if answer is None else _ids(tokenizer, answer_text(tokenizer, fmt, user, answer), False)
    )
    return Encoded(
        input_ids=prompt_ids + answer_ids,
        labels=[IGNORE_INDEX] * len(prompt_ids) + answer_ids,
        prompt_len=len(prompt_ids),
        truncated=truncated,
    )


def encode_rows(
    tokenizer,
    fmt: PromptFormat,
    table,
    instructions=None,
    with_answer: bool = True,
) -> list[Encoded]:
    """Every row of a task table encoded (answer = its first reference, or prompt only);
    ``instructions`` overrides the table's instruction per row."""
    out = []
    for i, row in enumerate(table.itertuples(index=False)):
        instruction = row.instruction if instructions is None else instructions[i]
        answer = row.references[0] if with_answer else None
        out.append(encode(tokenizer, fmt, instruction, row.input, row.suffix, answer))
    return out


def stop_token_ids(tokenizer, fmt: PromptFormat | None = None) -> list[int]:
    """Token ids that end an answer: eos, the format's end-of-turn token, and the end-of-turn
    markers of common templates."""
    ids = {tokenizer.eos_token_id}
    names = ["<|im_end|>", "<|eot_id|>", "<end_of_turn>", "<|end|>"]
    if fmt is not None and (end := end_of_turn_token(tokenizer, fmt)):
        names.append(end)
    for tok in names:
        tid = tokenizer.convert_tokens_to_ids(tok)
        if isinstance(tid, int) and tid != tokenizer.unk_token_id:
            ids.add(tid)
    return sorted(i for i in ids if i is not None)


_REASONING = [
    re.compile(re.escape(open_) + r".*?" + re.escape(close), flags=re.S)
    for open_, close in REASONING_BLOCKS
]


def strip_reasoning(text: str) -> str:
    """The answer without reasoning blocks: closed ``<think>…</think>`` blocks are removed, and an
    unclosed one (the model ran out of tokens while thinking) leaves no answer."""
    for (open_, _), pattern in zip(REASONING_BLOCKS, _REASONING, strict=True):
        text = pattern.sub("", text)
        if open_ in text:
            text = text[: text.index(open_)]
    return text.strip()
