"""What every evaluation of a model state evaluates: each task with its original prompt, the
held-out paraphrases no run trains on, and, for a task the run trained with another prompt,
that prompt too (``prompt_id`` "trained", the SAPO paper's protocol). Shared by the generation
(:mod:`promptcl.evaluate.inference`) and likelihood (:mod:`promptcl.evaluate.likelihood`)
evaluations, so both
measure the same (task, prompt, item) rows."""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import pandas as pd

from promptcl.analysis.aggregate import TRAINED_PROMPT_ID
from promptcl.prompts.candidates import heldout_prompts
from promptcl.store import paths

#: the workflow folder (relative paths of the config are relative to it)
WORKFLOW_DIR = Path(__file__).resolve().parents[3]


def trained_prompts(adapters: Sequence[str]) -> dict[str, str]:
    """Task -> instruction, for the tasks of these stages that trained with a non-original
    prompt (from each adapter's stage record)."""
    out = {}
    for adapter in adapters:
        info = json.loads((Path(adapter) / paths.STAGE_RECORD).read_text())
        # every task the stage trained with the run's strategy (several for multitask)
        prompts = info.get("evaluation_prompts") or {info["task"]: info["evaluation_prompt"]}
        for task, prompt in prompts.items():
            if int(prompt["candidate_id"]) != 0:
                out[task] = prompt["instruction"]
    return out


def evaluation_prompts(
    task: str, pool: pd.DataFrame | None, trained: dict[str, str]
) -> list[tuple[str, str | None]]:
    """(prompt_id, instruction) pairs of one task; None is the task's own instruction."""
    prompts: list[tuple[str, str | None]] = [("original", None)]
    if pool is not None:
        prompts += [(pid, text) for pid, _, text in heldout_prompts(pool)]
    if task in trained:
        prompts.append((TRAINED_PROMPT_ID, trained[task]))
    return prompts


def evaluate_tasks(
    tasks: Sequence[str],
    tables: Sequence[str],
    pools: Sequence[str | None],
    trained: dict[str, str],
    evaluate: Callable[[str, pd.DataFrame, str, str | None], pd.DataFrame],
) -> Iterator[tuple[str, pd.DataFrame]]:
    """(task, its rows under every evaluation prompt) per task; ``evaluate(task, table,
    prompt_id, instruction)`` measures one task under one prompt."""
    for task, table, prompts in task_prompts(tasks, tables, pools, trained):
        parts = [evaluate(task, table, pid, text) for pid, text in prompts]
        yield task, pd.concat(parts, ignore_index=True)


def log_scores(log, task: str, table: pd.DataFrame, metrics: Sequence[str]) -> None:
    """One log line per evaluation prompt: the task's mean of each metric."""
    for pid, part in table.groupby("prompt_id", sort=False):
        means = " ".join(f"{m}={part[m].mean():.3g}" for m in metrics)
        log.info("%s [%s]: n=%d %s", task, pid, len(part), means)


def task_prompts(
    tasks: Sequence[str],
    tables: Sequence[str],
    pools: Sequence[str | None],
    trained: dict[str, str],
) -> Iterator[tuple[str, pd.DataFrame, list[tuple[str, str | None]]]]:
    """(task, its test table, its evaluation prompts) per task."""
    pools = list(pools) or [None] * len(tables)
    for task, table_path, pool in zip(tasks, tables, pools, strict=True):
        pool_table = None if pool is None else pd.read_parquet(pool)
        yield task, pd.read_parquet(table_path), evaluation_prompts(task, pool_table, trained)


@dataclass(frozen=True)
class PredictJob:
    """One prediction job: what it evaluates, and the model state and settings it generates with."""

    tasks: Sequence[str]
    tables: Sequence[str]
    pools: Sequence[str | None]
    trained: dict[str, str]
    fmt: object  # PromptFormat
    gen: object  # GenerationSpec
    generation: dict
    model_options: dict
    model_dir: str
    adapters: Sequence[str]
    threads: int = 1


def predict_tasks(job: PredictJob, log) -> dict[str, pd.DataFrame]:
    """Task -> its greedy predictions under every evaluation prompt, with ``generation.engine``:
    ``hf`` loads the state here (frozen LoRAs merged) and generates task by task; ``vllm`` sends
    every prompt of the job to one engine as one batch (the state as one LoRA: the plan gives a
    stage's stacked LoRAs combined)."""
    from promptcl.model.devices import resolve_precision
    from promptcl.model.modeling import load_tokenizer

    precision = resolve_precision(job.model_options["precision"])
    tokenizer = load_tokenizer(Path(job.model_dir), job.model_options["trust_remote_code"])
    predict = _predict_vllm if job.gen.engine == "vllm" else _predict_hf
    frames = predict(job, tokenizer, precision, log)
    return {task: pd.concat(parts, ignore_index=True) for task, parts in frames.items()}


def _predict_hf(job: PredictJob, tokenizer, precision: str, log) -> dict[str, list[pd.DataFrame]]:
    from promptcl.evaluate.inference import GenerationStats, predict_table
    from promptcl.model.devices import default_device
    from promptcl.model.modeling import load_state, use_attention

    trust = job.model_options["trust_remote_code"]
    adapters = [Path(a) for a in job.adapters]
    model = load_state(Path(job.model_dir), adapters, precision, trust, merge=True)
    model = model.to(default_device())
    use_attention(model, job.model_options.get("attn_implementation", "auto"), training=False)
    stats, out = GenerationStats(), {}
    for task, table, prompts in task_prompts(job.tasks, job.tables, job.pools, job.trained):
        for pid, text in prompts:
            out.setdefault(task, []).append(
                predict_table(
                    model, tokenizer, table, job.fmt, job.gen, task, precision, stats, pid, text
                )
            )
    log.info(
        "%d adapters, precision %s: %d prompt + %d generated tokens in %.1f s",
        len(adapters),
        precision,
        stats.prompt_tokens,
        stats.generated_tokens,
        stats.seconds,
    )
    return out


def _predict_vllm(job: PredictJob, tokenizer, precision: str, log) -> dict[str, list[pd.DataFrame]]:
    from promptcl.evaluate import vllm_engine
    from promptcl.evaluate.inference import encode_requests, prediction_frame

    if len(job.adapters) > 1:
        raise ValueError(f"the vllm engine serves one LoRA, got {len(job.adapters)} adapters")
    lora = Path(job.adapters[0]) if job.adapters else None
    requests = [
        encode_requests(tokenizer, table, job.fmt, job.gen, task, pid, text)
        for task, table, prompts in task_prompts(job.tasks, job.tables, job.pools, job.trained)
        for pid, text in prompts
    ]
    spec = vllm_engine.VllmSpec.from_config(job.generation.get("vllm") or {}, WORKFLOW_DIR)
    stats = vllm_engine.EngineStats()
    answers = vllm_engine.generate(
        spec,
        Path(job.model_dir),
        lora,
        precision,
        requests,
        tokenizer,
        job.threads,
        job.model_options["trust_remote_code"],
        stats,
    )
    out: dict[str, list[pd.DataFrame]] = {}
    for req, raw in zip(requests, answers, strict=True):
        out.setdefault(req.task, []).append(prediction_frame(req, raw))
    log.info(
        "vLLM %s, precision %s, %s: engine start %.1f s; %d requests, %d generated tokens in "
        "%.1f s",
        stats.version,
        precision,
        lora or "base model",
        stats.start_seconds,
        stats.requests,
        stats.generated_tokens,
        stats.generate_seconds,
    )
    return out
