"""Pre-update measurements of T2's candidate prompts on the state after T1 (the SAPO paper's
Section 3): what can be measured about a prompt *before* training with it, to be correlated with
what training with it does to other tasks.

All losses are answer-token cross-entropies on the first K training instances of T2, computed
as SAPO's scoring does. Gradients are those of T2's loss (mean over instances of each instance's
mean answer-token loss) with respect to the weights of the LoRA target modules (``q_proj``,
``v_proj``…, frozen LoRAs of the state included in the forward pass): the directions a LoRA on
those modules would move in first. Their cosine with T1's gradient (T1's first K instances with
the prompt T1 trained with) says whether training T2 with this prompt pulls against T1.
"""

from __future__ import annotations

import math
import re
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import pandas as pd
import torch

from promptcl.evaluate.inference import GenerationSpec, autocast, predict_table
from promptcl.evaluate.likelihood import likelihood_table
from promptcl.analysis.metrics import metric as spec_of
from promptcl.analysis.metrics import rouge_l, score_predictions
from promptcl.prompts.prompting import IGNORE_INDEX, PromptFormat
from promptcl.prompts.readability import flesch_kincaid_grade
from promptcl.prompts.scores import rank_columns
from promptcl.evaluate.scoring import (
    answer_logits,
    encode_pairs,
    score_candidates,
    token_losses,
)

#: Columns of measures.parquet, each documented in docs/study.md.
MEASURES = (
    "loss_batch_mean",
    "loss_instance_mean",
    "loss_token_mean",
    "instruction_perplexity",
    "answer_accuracy",
    "zero_shot_score",
    "grad_norm",
    "grad_cosine",
    "prompt_tokens",
    "rouge_to_original",
    "fk_grade",
)
_LAYER = re.compile(r"\.(\d+)\.")


@dataclass(frozen=True)
class MeasureSpec:
    """``config.yaml: study`` (instances, metric) with the scoring and LoRA settings it shares."""

    instances: int
    metric: str
    modules: tuple[str, ...]
    batch_size: int = 16
    reference_batch_size: int = 8


def target_weights(model, modules: Sequence[str]) -> dict[str, torch.nn.Parameter]:
    """The base weights of every ``modules`` layer, keyed ``<module>.<layer>`` (PEFT-wrapped or
    not); raises when a module type matches nothing."""
    found: dict[str, torch.nn.Parameter] = {}
    for name, param in model.named_parameters():
        for module in modules:
            if name.endswith((f"{module}.weight", f"{module}.base_layer.weight")):
                layer = _LAYER.search(name)
                found[f"{module}.{layer.group(1) if layer else '0'}"] = param
    missing = [m for m in modules if not any(k.startswith(f"{m}.") for k in found)]
    if missing:
        raise ValueError(f"lora.target_modules: no weights of {missing} in the model")
    return found


def loss_gradient(
    model,
    pad_token_id: int,
    pairs: Sequence[tuple[int, int, list[int], list[int]]],
    weights: dict[str, torch.nn.Parameter],
    batch_size: int,
    precision: str,
) -> dict[str, torch.Tensor]:
    """fp32 gradient of the mean over ``pairs`` of each pair's mean answer-token loss, with
    respect to ``weights`` only (everything else stays frozen)."""
    previous = {name: p.requires_grad for name, p in model.named_parameters()}
    for p in model.parameters():
        p.requires_grad_(False)
    for p in weights.values():
        p.requires_grad_(True)
        p.grad = None
    try:
        with torch.enable_grad():
            for start in range(0, len(pairs), batch_size):
                chunk = pairs[start : start + batch_size]
                logits, target, _ = answer_logits(model, chunk, pad_token_id, precision)
                ce = token_losses(logits, target)
                per_instance = ce.sum(1) / (target != IGNORE_INDEX).sum(1).clamp(min=1)
                (per_instance.sum() / len(pairs)).backward()
        return {name: p.grad.detach().float().clone() for name, p in weights.items()}
    finally:
        for name, p in model.named_parameters():
            p.grad = None
            p.requires_grad_(previous[name])


def cosine(a: torch.Tensor, b: torch.Tensor) -> float:
    denominator = float(a.norm() * b.norm())
    return float((a * b).sum()) / denominator if denominator > 0 else math.nan


def gradient_rows(
    candidate_id: int, grad: dict[str, torch.Tensor], reference: dict[str, torch.Tensor]
) -> list[dict]:
    """Per (module type, layer): the cosine with the reference gradient and the norm."""
    rows = []
    for key, g in grad.items():
        module, layer = key.rsplit(".", 1)
        rows.append(
            {
                "candidate_id": candidate_id,
                "module": module,
                "layer": int(layer),
                "cosine": cosine(g, reference[key]),
                "norm": float(g.norm()),
            }
        )
    return rows


def _joined(grad: dict[str, torch.Tensor], module: str | None = None) -> torch.Tensor:
    keys = sorted(k for k in grad if module is None or k.rsplit(".", 1)[0] == module)
    return torch.cat([grad[k].reshape(-1) for k in keys])


def gradient_summary(
    grad: dict[str, torch.Tensor], reference: dict[str, torch.Tensor], modules: Sequence[str]
) -> dict[str, float]:
    """The gradient's norm, and its cosine with the reference over all modules and per type."""
    out = {
        "grad_norm": float(_joined(grad).norm()),
        "grad_cosine": cosine(_joined(grad), _joined(reference)),
    }
    for module in modules:
        out[f"grad_cosine_{module}"] = cosine(_joined(grad, module), _joined(reference, module))
    return out


def text_features(tokenizer, text: str, original: str) -> dict[str, float]:
    """Model-free features of a prompt: its length in tokens, its ROUGE-L F (0-100) against the
    original instruction and its Flesch–Kincaid grade."""
    return {
        "prompt_tokens": len(tokenizer(text, add_special_tokens=False)["input_ids"]),
        "rouge_to_original": rouge_l(text, [original]),
        "fk_grade": flesch_kincaid_grade(text),
    }


@torch.inference_mode()
def instruction_perplexity(model, tokenizer, text: str, precision: str) -> float:
    """Perplexity of the instruction text itself under the state (Gonen et al. 2022: prompts
    of lower perplexity work better): exp of the mean NLL of tokens 2..n given the preceding
    ones, the text tokenised alone with the tokenizer's special tokens (BOS if it adds one)."""
    ids = torch.tensor([tokenizer(text)["input_ids"]], device=next(model.parameters()).device)
    if ids.shape[1] < 2:
        return math.nan
    with autocast(model, precision):
        logits = model(input_ids=ids, use_cache=False).logits
    nll = torch.nn.functional.cross_entropy(logits[0, :-1].float(), ids[0, 1:])
    return math.exp(float(nll))


def zero_shot_score(
    model,
    tokenizer,
    fmt: PromptFormat,
    table: pd.DataFrame,
    text: str,
    metric: str,
    generation: GenerationSpec,
    precision: str,
    task: str,
) -> float:
    """The state's ``metric`` with this prompt on the K instances, measured the way the metric
    is (greedy generation, or the likelihood pass for ``gold_logprob``/``rank_accuracy``)."""
    if spec_of(metric).outcome == "likelihood":
        scored = likelihood_table(model, tokenizer, table, fmt, precision, instruction=text)
    else:
        predicted = predict_table(
            model, tokenizer, table, fmt, generation, task, precision, instruction=text
        )
        scored = score_predictions(predicted)
    return float(np.nanmean(scored[metric].to_numpy(float)))


def measure_candidates(
    model,
    tokenizer,
    fmt: PromptFormat,
    t2_table: pd.DataFrame,
    candidates: Sequence[tuple[int, str]],
    t1_table: pd.DataFrame,
    t1_instruction: str,
    spec: MeasureSpec,
    generation: GenerationSpec,
    precision: str,
    task: str,
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """(measures: one row per candidate, gradients: one row per candidate × module × layer)."""
    t2_table = t2_table.head(spec.instances).reset_index(drop=True)
    t1_table = t1_table.head(spec.instances).reset_index(drop=True)
    pad = tokenizer.pad_token_id
    losses = score_candidates(
        model,
        tokenizer,
        fmt,
        t2_table,
        candidates,
        spec.batch_size,
        precision,
        reference_batch_size=spec.reference_batch_size,
    )
    losses = rank_columns(losses).set_index("candidate_id")
    weights = target_weights(model, spec.modules)
    t1_pairs = encode_pairs(tokenizer, fmt, t1_table, [(-1, t1_instruction)])
    t1_grad = loss_gradient(model, pad, t1_pairs, weights, spec.batch_size, precision)
    original = dict(candidates)[0] if 0 in dict(candidates) else candidates[0][1]
    rows, grad_rows = [], []
    for cid, text in candidates:
        pairs = encode_pairs(tokenizer, fmt, t2_table, [(cid, text)])
        grad = loss_gradient(model, pad, pairs, weights, spec.batch_size, precision)
        row = {
            "candidate_id": cid,
            "text": text,
            "loss_batch_mean": float(losses.loc[cid, "mean_batch_loss"]),
            "loss_instance_mean": float(losses.loc[cid, "mean_instance_loss"]),
            "loss_token_mean": float(losses.loc[cid, "mean_token_loss"]),
            "instruction_perplexity": instruction_perplexity(model, tokenizer, text, precision),
            "answer_accuracy": float(losses.loc[cid, "answer_accuracy"]),
            "zero_shot_score": zero_shot_score(
                model, tokenizer, fmt, t2_table, text, spec.metric, generation, precision, task
            ),
            **gradient_summary(grad, t1_grad, spec.modules),
            **text_features(tokenizer, text, original),
            "instances": len(t2_table),
        }
        rows.append(row)
        grad_rows += gradient_rows(cid, grad, t1_grad)
    return pd.DataFrame(rows), pd.DataFrame(grad_rows)
