"""Throughput of the default model on this machine: training, prefill and decode tokens/s, memory.

Prints figures (it asserts nothing), so later work can be compared against them:

    .venv/bin/python benchmarks/model_throughput.py [--precision auto|bf16|fp32] [--model DIR]

Uses results/model/hf when the workflow has prepared it, else converts the embedded model once
into results/benchmarks/model_hf. Writes the figures to results/benchmarks/model_throughput.json.
"""

from __future__ import annotations

import argparse
import json
import platform
import resource
import sys
import tempfile
import time
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "workflow_scripts"))

from promptcl.batching import left_pad  # noqa: E402
from promptcl.data import encode_table  # noqa: E402
from promptcl.devices import resolve_precision  # noqa: E402
from promptcl.inference import generate  # noqa: E402
from promptcl.methods import build_stage_model  # noqa: E402
from promptcl.modeling import ModelSpec, load_state, load_tokenizer, prepare_model  # noqa: E402
from promptcl.prompting import PromptFormat, encode  # noqa: E402
from promptcl.specs import LoraSpec, TrainSpec  # noqa: E402
from promptcl.tasks import TaskSource, read_split, resolve_task  # noqa: E402
from promptcl.trainer import fit  # noqa: E402


def model_dir(arg: str | None) -> Path:
    if arg:
        return Path(arg)
    prepared = REPO / "results/model/hf"
    if (prepared / "config.json").is_file():
        return prepared
    cached = REPO / "results/benchmarks/model_hf"
    if not (cached / "config.json").is_file():
        print("converting the embedded model once into", cached, flush=True)
        prepare_model(ModelSpec(), cached)
    return cached


def task_table(n: int):
    sources = [TaskSource("sentence_label", REPO / "resources/tasks/sentence_label")]
    return read_split(resolve_task("task195", sources), "train").head(n)


def bench_training(folder: Path, tokenizer, precision: str, n: int, batch: int) -> dict:
    model = build_stage_model(folder, [], LoraSpec(), 1, precision)
    examples = encode_table(tokenizer, PromptFormat(), task_table(n))
    spec = TrainSpec(batch_size=batch, save_steps=10_000, seed=0, precision=precision)
    with tempfile.TemporaryDirectory() as state:
        result = fit(model, tokenizer, examples, spec, Path(state))
    return {
        "train_examples": n,
        "train_tokens": result.info["tokens"],
        "train_seconds": result.info["train_seconds"],
        "train_tokens_per_s": result.info["tokens_per_second"],
    }


def bench_inference(folder: Path, tokenizer, precision: str, n: int, batch: int, new: int) -> dict:
    model = load_state(folder, (), precision)
    fmt = PromptFormat()
    prompts = [
        encode(tokenizer, fmt, r.instruction, r.input, r.suffix, None).input_ids
        for r in task_table(n).itertuples()
    ]
    autocast = torch.autocast("cpu", torch.bfloat16, enabled=precision == "bf16")
    batches = [left_pad(prompts[i : i + batch], tokenizer.pad_token_id) for i in range(0, n, batch)]

    def run(new_tokens: int | None) -> float:
        """Seconds for all batches: a forward pass (None) or generating exactly new_tokens."""
        started = time.perf_counter()
        with torch.inference_mode(), autocast:
            for ids, mask in batches:
                if new_tokens is None:
                    model(input_ids=ids, attention_mask=mask)
                else:
                    model.generate(
                        input_ids=ids,
                        attention_mask=mask,
                        max_new_tokens=new_tokens,
                        min_new_tokens=new_tokens,
                        do_sample=False,
                        pad_token_id=tokenizer.pad_token_id,
                    )
        return time.perf_counter() - started

    run(None)  # warm-up: first calls pay for kernel selection and allocation
    prompt_tokens = sum(int(mask.sum()) for _, mask in batches)
    prefill_s = run(None)
    # decode rate from the difference of two generation lengths, so prefill cancels out
    one_s, full_s = run(1), run(new)
    decode_s = max(full_s - one_s, 1e-9)
    # the evaluation path as the workflow runs it (stops at end of turn)
    started = time.perf_counter()
    generate(model, tokenizer, prompts, 16, batch, precision)
    eval_s = time.perf_counter() - started
    return {
        "prefill_prompts": n,
        "prefill_tokens": prompt_tokens,
        "prefill_tokens_per_s": round(prompt_tokens / prefill_s, 1),
        "decode_new_tokens_per_prompt": new,
        "decode_tokens_per_s": round(n * (new - 1) / decode_s, 1),
        "eval_seconds_per_64_prompts": round(eval_s * 64 / n, 1),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", help="HF model folder (default: the embedded SmolLM2)")
    parser.add_argument("--precision", default="auto", choices=["auto", "bf16", "fp32"])
    parser.add_argument("--train-examples", type=int, default=64)
    parser.add_argument("--prompts", type=int, default=64)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--new-tokens", type=int, default=16)
    parser.add_argument("--threads", type=int, default=torch.get_num_threads())
    parser.add_argument("--output", type=Path, help="JSON file for the figures")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    folder = model_dir(args.model)
    precision = resolve_precision(args.precision)
    tokenizer = load_tokenizer(folder)
    figures = {
        "model": str(folder),
        "precision": precision,
        "threads": args.threads,
        "torch": torch.__version__,
        "cpu": platform.processor() or platform.machine(),
        "cuda": torch.cuda.get_device_name() if torch.cuda.is_available() else None,
    }
    figures |= bench_training(folder, tokenizer, precision, args.train_examples, 8)
    figures |= bench_inference(
        folder, tokenizer, precision, args.prompts, args.batch_size, args.new_tokens
    )
    figures["peak_rss_mb"] = round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)
    if torch.cuda.is_available():
        figures["peak_cuda_mb"] = round(torch.cuda.max_memory_allocated() / 2**20, 1)
    out = report(figures, "model_throughput", args.output)
    print(f"(written to {out})")


def report(figures: dict, name: str, out: Path | None = None) -> Path:
    """Print the figures as an aligned table and keep them in results/benchmarks/<name>.json
    (or ``out``)."""
    out = Path(out) if out else REPO / f"results/benchmarks/{name}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(figures, indent=2) + "\n")
    width = max(map(len, figures))
    for key, value in figures.items():
        print(f"{key:<{width}}  {value}")
    return out


if __name__ == "__main__":
    main()
