"""The same evaluation through generation.engine hf and vllm in one run: start-up apart from
steady throughput, and how many answers agree.

Two evaluations of one model state: a demo stage (the bundled demo tasks, 64 test items each,
16 new tokens, the demo's 256-token input budget) and a paper-like one (the bundled tasks with
the longest inputs, 1536-token budget and 128 new tokens, as config/paper_ni_seq_c1.yaml). The
hf engine loads the state in this process (start-up: loading and merging) and generates task by
task; the vllm engine runs every prompt as one batch in .venv-vllm (start-up: the engine's own
start, reported by the worker). Prints figures, asserts nothing:

    .venv/bin/python benchmarks/vllm_throughput.py [--adapter results/<run>/stage_1/adapter]

Tokens/s count generated tokens (each answer up to and including its stop token). The matmul
rate of this CPU is measured before and after, as the other benchmarks do, and the CPU named.
"""

from __future__ import annotations

import argparse
import logging
import sys
import time
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "workflow_scripts"))
sys.path.insert(0, str(REPO / "benchmarks"))

from model_throughput import best_rates, matmul_rates, model_dir, peak, report  # noqa: E402

from promptcl.evaluate import vllm_engine  # noqa: E402
from promptcl.evaluate.inference import (  # noqa: E402
    GenerationSpec,
    GenerationStats,
    encode_requests,
    generate,
)
from promptcl.model.devices import resolve_precision  # noqa: E402
from promptcl.model.modeling import load_state, load_tokenizer, use_attention  # noqa: E402
from promptcl.prompts.prompting import PromptFormat  # noqa: E402
from promptcl.tasks.files import TaskSource, read_split, resolve_task  # noqa: E402

SOURCES = [
    TaskSource("sentence_label", REPO / "resources/tasks/sentence_label"),
    TaskSource("superni", REPO / "resources/tasks/superni"),
]
EVALUATIONS = {
    # name: (tasks, input token budget, new tokens)
    "demo_stage": (["task195", "task1310", "task363", "task1343"], 256, 16),
    "paper_like": (["task224", "task589", "task618", "task073"], 1536, 128),
}


def cpu_name() -> str:
    """The CPU's model name and its bf16 instruction sets, from /proc/cpuinfo."""
    try:
        info = Path("/proc/cpuinfo").read_text()
    except OSError:
        return "unknown"
    name = next((line.split(":", 1)[1].strip() for line in info.splitlines()
                 if line.startswith("model name")), "unknown")  # fmt: skip
    flags = next((line for line in info.splitlines() if line.startswith("flags")), "")
    extras = [f for f in ("avx2", "avx512f", "avx512_bf16", "amx_bf16") if f" {f}" in flags]
    return f"{name} ({', '.join(extras)})"


def requests_of(tokenizer, tasks, budget: int, new_tokens: int, items: int):
    fmt = PromptFormat(max_input_tokens=budget)
    gen = GenerationSpec(max_new_tokens=new_tokens)
    return [
        encode_requests(
            tokenizer, read_split(resolve_task(t, SOURCES), "test").head(items), fmt, gen, t
        )  # fmt: skip
        for t in tasks
    ]


def run_hf(folder, adapters, precision, requests, tokenizer, batch_size: int) -> dict:
    started = time.perf_counter()
    model = load_state(folder, adapters, precision, merge=True)
    use_attention(model, "auto", training=False)
    start = time.perf_counter() - started
    stats, answers = GenerationStats(), []
    for r in requests:
        answers.append(
            generate(
                model,
                tokenizer,
                r.prompts,
                r.max_new_tokens,
                batch_size,
                precision,
                stats,
                stops=r.stops,
            )  # fmt: skip
        )
    return {
        "start_s": round(start, 2),
        "generate_s": round(stats.seconds, 2),
        "generated_tokens": stats.generated_tokens,
        "tokens_per_s": round(stats.generated_tokens / stats.seconds, 1),
        "answers": answers,
    }


def run_vllm(
    folder, adapter, precision, requests, tokenizer, python: str, threads: int, eager: bool
) -> dict:
    spec = vllm_engine.VllmSpec(python=python, enforce_eager=eager)
    stats = vllm_engine.EngineStats()
    answers = vllm_engine.generate(
        spec, folder, adapter, precision, requests, tokenizer, threads, stats=stats
    )
    return {
        "start_s": round(stats.start_seconds, 2),
        "generate_s": round(stats.generate_seconds, 2),
        "generated_tokens": stats.generated_tokens,
        "tokens_per_s": round(stats.generated_tokens / stats.generate_seconds, 1),
        "version": stats.version,
        "answers": answers,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", help="HF model folder (default: the embedded SmolLM2)")
    parser.add_argument("--adapter", type=Path, help="one LoRA (a stage's, or a combined one)")
    parser.add_argument("--precision", default="auto", choices=["auto", "bf16", "fp32"])
    parser.add_argument("--items", type=int, default=64, help="test items per task")
    parser.add_argument("--batch-size", type=int, default=16, help="the hf engine's batch")
    parser.add_argument("--threads", type=int, default=torch.get_num_threads())
    parser.add_argument("--python", default=str(REPO / ".venv-vllm/bin/python"))
    parser.add_argument("--evaluations", default=",".join(EVALUATIONS))
    parser.add_argument(
        "--enforce-eager", action="store_true", help="vLLM without torch.compile / CUDA graphs"
    )
    parser.add_argument("--output", type=Path, help="JSON file for the figures")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO)
    torch.set_num_threads(args.threads)
    folder = model_dir(args.model)
    precision = resolve_precision(args.precision)
    tokenizer = load_tokenizer(folder)
    adapters = [args.adapter] if args.adapter else []
    figures = {
        "model": str(folder),
        "adapter": str(args.adapter) if args.adapter else None,
        "precision": precision,
        "threads": args.threads,
        "cpu": cpu_name(),
        "vllm_enforce_eager": args.enforce_eager,
    }
    before = matmul_rates(args.threads, precision)
    for name in args.evaluations.split(","):
        tasks, budget, new_tokens = EVALUATIONS[name]
        requests = requests_of(tokenizer, tasks, budget, new_tokens, args.items)
        prompts = sum(len(r.prompts) for r in requests)
        hf = run_hf(folder, adapters, precision, requests, tokenizer, args.batch_size)
        vl = run_vllm(folder, args.adapter, precision, requests, tokenizer, args.python,
                      args.threads, args.enforce_eager)  # fmt: skip
        same = sum(a == b for ra, rb in zip(hf.pop("answers"), vl.pop("answers"), strict=True)
                   for a, b in zip(ra, rb, strict=True))  # fmt: skip
        figures[f"{name}_prompts"] = prompts
        figures[f"{name}_prompt_tokens"] = sum(len(p) for r in requests for p in r.prompts)
        figures |= {f"{name}_hf_{k}": v for k, v in hf.items()}
        figures |= {f"{name}_vllm_{k}": v for k, v in vl.items()}
        for engine, res in (("hf", hf), ("vllm", vl)):
            figures[f"{name}_{engine}_prompts_per_s"] = round(prompts / res["generate_s"], 2)
        figures[f"{name}_steady_speedup"] = round(hf["generate_s"] / vl["generate_s"], 2)
        figures[f"{name}_total_speedup"] = round(
            (hf["start_s"] + hf["generate_s"]) / (vl["start_s"] + vl["generate_s"]), 2
        )
        figures[f"{name}_identical_answers"] = round(same / prompts, 3)
    after = matmul_rates(args.threads, precision)
    figures |= best_rates(before, after)
    figures["matmul_reference_tflops"] = peak(best_rates(before, after), precision)
    out = report(figures, "vllm_throughput", args.output)
    print(f"(written to {out})")


if __name__ == "__main__":
    main()
