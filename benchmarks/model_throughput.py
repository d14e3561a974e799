"""Throughput of the default model on this machine: training, prefill and decode tokens/s,
model-FLOP utilisation (MFU) and memory, each phase A/B against the earlier path in the same run.

Prints figures (it asserts nothing), so later work can be compared against them:

    .venv/bin/python benchmarks/model_throughput.py [--precision auto|bf16|fp32] [--model DIR]

MFU = model FLOPs per second / the matmul rate this process measures first (bf16 and fp32,
2048×2048×2048 and 1600×576×576 products; the reference is the higher of the two in the
compute precision). Model FLOPs: 4N per trained token (forward 2N + input gradients 2N; the
frozen weights get no gradient), 2N per prefilled, scored or decoded token, N = every parameter
of the base model (embeddings included). A/B: ``legacy`` is the path before the speed work
(SDPA attention, sliced answer logits and random batches for training, ``model.generate`` for
decoding), ``current`` the default one (length-grouped batches; for evaluation the lean greedy
loop, its reserved KV cache and the prompt pass that computes the rows' shared leading tokens
once, timed alone as ``prompt_pass_*``); ``current_random`` has the
current kernels on the legacy batches, and its loss curve is compared with legacy's step by
step.

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
from dataclasses import replace
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "workflow_scripts"))

from promptcl.evaluate.inference import generate, greedy_tokens, prefill  # noqa: E402
from promptcl.methods import build_stage_model  # noqa: E402
from promptcl.model.batching import left_pad, positions  # noqa: E402
from promptcl.model.devices import resolve_precision  # noqa: E402
from promptcl.model.modeling import (  # noqa: E402
    ModelSpec,
    load_state,
    load_tokenizer,
    prepare_model,
    use_attention,
)
from promptcl.prompts.prompting import PromptFormat, encode  # noqa: E402
from promptcl.tasks.files import TaskSource, read_split, resolve_task  # noqa: E402
from promptcl.train import trainer as trainer_module  # noqa: E402
from promptcl.train.data import encode_table  # noqa: E402
from promptcl.train.job import LAUNCH_KEYS  # noqa: E402
from promptcl.train.specs import LoraSpec, TrainSpec, schema_defaults  # noqa: E402
from promptcl.train.trainer import fit  # noqa: E402


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


def matmul_rates(threads: int, precision: str = "fp32") -> dict[str, float]:
    """TFLOP/s of fp32 matrix products on this machine, now, with these threads, and of bf16 ones
    where the CPU runs bf16 natively or ``precision`` is bf16. Without native bf16 (an AVX2 CPU:
    0.3 GFLOP/s measured) a single 2048³ bf16 product takes about a minute, so repetitions are
    sized by the time of one product, about a second per shape."""
    rates = {}
    tags = {"fp32"} | (
        {"bf16"} if precision == "bf16" or resolve_precision("auto") == "bf16" else set()
    )
    for dtype, tag in ((torch.bfloat16, "bf16"), (torch.float32, "fp32")):
        if tag not in tags:
            continue
        for m, k, n in ((2048, 2048, 2048), (1600, 576, 576)):
            a, b = torch.randn(m, k, dtype=dtype), torch.randn(k, n, dtype=dtype)
            started = time.perf_counter()
            a @ b  # warm-up, and the time of one product
            one = time.perf_counter() - started
            reps = max(1, min(int(2e10 / (2 * m * k * n)), int(1.0 / max(one, 1e-6))))
            started = time.perf_counter()
            for _ in range(reps):
                a @ b
            seconds = time.perf_counter() - started
            rates[f"matmul_{tag}_{m}x{k}x{n}_tflops"] = round(
                2 * m * k * n * reps / seconds / 1e12, 3
            )
    return rates


def best_rates(*measured: dict[str, float]) -> dict[str, float]:
    """Each product's best rate over measurements taken before and after the timed phases: a
    shared machine's rate drifts (0.40-0.82 TFLOP/s bf16 here within one hour), and the
    reference must not fall with it, or MFU would rise for nothing."""
    return {k: max(m[k] for m in measured) for k in measured[0]}


def with_mfu(figures: dict, flops_per_token: dict[str, float], reference: float) -> dict:
    """``<phase>_mfu`` for every ``<phase>_tokens_per_s`` figure, against ``reference``."""
    return figures | {
        f"{phase}_mfu": mfu(figures[f"{phase}_tokens_per_s"], flops, reference)
        for phase, flops in flops_per_token.items()
    }


def peak(rates: dict[str, float], precision: str) -> float:
    """The reference rate of MFU: the best measured product in the compute precision."""
    return max(v for k, v in rates.items() if k.startswith(f"matmul_{precision}_"))


def mfu(tokens_per_s: float, flops_per_token: float, peak_tflops: float) -> float:
    return round(tokens_per_s * flops_per_token / (peak_tflops * 1e12), 3)


#: the current path's attention kernel (``--attention sdpa`` to time the current path without the
#: CPU length dispatch)
ATTENTION = "auto"


def train_once(
    folder: Path,
    tokenizer,
    precision: str,
    examples,
    batch: int,
    legacy: bool,
    grouped: bool,
    packed: bool = False,
):
    lora = LoraSpec.from_config(schema_defaults("lora"))
    model = build_stage_model(folder, [], lora, 1, precision)
    use_attention(model, "sdpa" if legacy else ATTENTION, training=True)
    training = {k: v for k, v in schema_defaults("training").items() if k not in LAUNCH_KEYS}
    training.update(batch_size=batch, save_steps=10_000, packing=packed)
    spec = TrainSpec.from_config(training, seed=0, precision=precision)
    if not grouped:  # random batches, as before training.length_grouping
        spec = replace(spec, length_grouping=0)
    trainer_module.LOGITS_AS_INDICES = not legacy
    try:
        with tempfile.TemporaryDirectory() as state:
            return fit(model, tokenizer, examples, spec, Path(state))
    finally:
        trainer_module.LOGITS_AS_INDICES = True


#: name -> (legacy kernels, length-grouped batches, packed rows): ``current_random`` has the
#: current kernels on the legacy path's batches, so its loss curve is comparable step by step;
#: ``packed`` is ``current`` with training.packing (the same batches, one row each)
TRAIN_PATHS = {
    "legacy": (True, False, False),
    "current_random": (False, False, False),
    "current": (False, True, False),
    "packed": (False, True, True),
}


def bench_training(folder: Path, tokenizer, precision: str, n: int, batch: int) -> dict:
    examples = encode_table(tokenizer, PromptFormat(), task_table(n))
    figures: dict = {"train_examples": n}
    curves = {}
    for name, (legacy, grouped, packed) in TRAIN_PATHS.items():
        result = train_once(folder, tokenizer, precision, examples, batch, legacy, grouped, packed)
        rate = result.info["tokens_per_second"]
        curves[name] = result.log["loss"].to_numpy()
        figures[f"train_{name}_tokens"] = result.info["tokens"]
        figures[f"train_{name}_seconds"] = result.info["train_seconds"]
        figures[f"train_{name}_tokens_per_s"] = rate
    rate = {name: figures[f"train_{name}_tokens_per_s"] for name in TRAIN_PATHS}
    figures["train_speedup"] = round(rate["current"] / rate["legacy"], 2)
    figures["train_kernel_speedup"] = round(rate["current_random"] / rate["legacy"], 2)
    figures["train_grouping_speedup"] = round(rate["current"] / rate["current_random"], 2)
    figures["train_packing_speedup"] = round(rate["packed"] / rate["current"], 2)
    # the same batches through both kernels: the curves differ only by float rounding
    figures["train_loss_curve_max_abs_diff"] = float(
        f"{abs(curves['current_random'] - curves['legacy']).max():.2e}"
    )
    # other batches, the same examples: the epoch's mean loss
    figures["train_grouped_mean_loss_diff"] = float(
        f"{curves['current'].mean() - curves['current_random'].mean():.2e}"
    )
    # the same batches, other LoRA dropout masks (drawn per tensor shape)
    figures["train_packed_mean_loss_diff"] = float(
        f"{curves['packed'].mean() - curves['current'].mean():.2e}"
    )
    return figures


def bench_inference(
    folder: Path,
    tokenizer,
    precision: str,
    n: int,
    batch: int,
    new: int,
) -> dict:
    model = load_state(folder, (), precision)
    fmt = PromptFormat()
    prompts = [
        encode(tokenizer, fmt, r.instruction, r.input, r.suffix, None).input_ids
        for r in task_table(n).itertuples()
    ]
    autocast = torch.autocast("cpu", torch.bfloat16, enabled=precision == "bf16")
    batches = [left_pad(prompts[i : i + batch], tokenizer.pad_token_id) for i in range(0, n, batch)]

    def run(new_tokens: int | None, decoder: str = "loop") -> float:
        """Seconds for all batches: a forward pass (None) or generating exactly new_tokens."""
        started = time.perf_counter()
        with torch.inference_mode(), autocast:
            for ids, mask in batches:
                if new_tokens is None:
                    model(input_ids=ids, attention_mask=mask, position_ids=positions(mask))
                elif decoder == "loop":
                    greedy_tokens(model, ids, mask, new_tokens, stops=[])  # no stop: all steps
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

    def prompt_pass(share: bool) -> float:
        """Seconds for the evaluation's prompt pass of all batches, with or without computing
        the rows' shared leading tokens once."""
        started = time.perf_counter()
        with torch.inference_mode(), autocast:
            for ids, mask in batches:
                prefill(model, ids, mask, 1, share_prefix=share)
        return time.perf_counter() - started

    run(None)  # warm-up: first calls pay for kernel selection and allocation
    prompt_pass(True)
    prompt_tokens = sum(int(mask.sum()) for _, mask in batches)
    prefill_s = run(None)
    prefill_rate = prompt_tokens / prefill_s
    whole_s, shared_s = prompt_pass(False), prompt_pass(True)
    figures = {
        "prefill_prompts": n,
        "prefill_tokens": prompt_tokens,
        "prefill_tokens_per_s": round(prefill_rate, 1),
        # prompt tokens per second of the evaluation's prompt pass (the shared prefix counted
        # once per row, as if computed): the gain of prefix sharing, not a FLOP rate
        "prompt_pass_whole_tokens_per_s": round(prompt_tokens / whole_s, 1),
        "prompt_pass_shared_tokens_per_s": round(prompt_tokens / shared_s, 1),
        "prompt_pass_sharing_speedup": round(whole_s / shared_s, 2),
        "decode_batch_size": batch,
        "decode_new_tokens_per_prompt": new,
    }
    for name, decoder in (("legacy", "hf"), ("current", "loop")):
        run(2, decoder)  # warm-up
        # decode rate from the difference of two generation lengths, so prefill cancels out
        one_s, full_s = run(1, decoder), run(new, decoder)
        rate = n * (new - 1) / max(full_s - one_s, 1e-9)
        figures[f"decode_{name}_tokens_per_s"] = round(rate, 1)
        # the evaluation path as the workflow runs it (stops at end of turn)
        started = time.perf_counter()
        generate(model, tokenizer, prompts, 16, batch, precision, decoder=decoder)
        figures[f"eval_{name}_seconds_per_64_prompts"] = round(
            (time.perf_counter() - started) * 64 / n, 1
        )
    figures["decode_speedup"] = round(
        figures["decode_current_tokens_per_s"] / figures["decode_legacy_tokens_per_s"], 2
    )
    return figures


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
    parser.add_argument("--attention", default="auto", help="model.attn_implementation")
    args = parser.parse_args()
    global ATTENTION
    ATTENTION = args.attention
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
    before = matmul_rates(args.threads, precision)
    params = n_parameters(folder)
    # untimed: the first steps of a process pay one-time kernel set-up, which the A/B's first
    # path would otherwise carry alone
    warm_up = encode_table(tokenizer, PromptFormat(), task_table(8))
    train_once(folder, tokenizer, precision, warm_up, 8, True, False)
    train_once(folder, tokenizer, precision, warm_up, 8, False, True)
    figures |= bench_training(folder, tokenizer, precision, args.train_examples, 8)
    figures |= bench_inference(
        folder, tokenizer, precision, args.prompts, args.batch_size, args.new_tokens
    )
    after = matmul_rates(args.threads, precision)
    rates = best_rates(before, after)
    reference = peak(rates, precision)
    figures |= rates
    figures |= {
        "mfu_reference_tflops": reference,
        "mfu_reference_before_after": [peak(before, precision), peak(after, precision)],
        "model_parameters": params,
        "flop_convention": "4N per trained token, 2N per prefilled/decoded token",
    }
    phases = {f"train_{name}": 4 * params for name in TRAIN_PATHS}
    phases |= {"prefill": 2 * params, "decode_legacy": 2 * params, "decode_current": 2 * params}
    figures = with_mfu(figures, phases, reference)
    figures["peak_rss_mb"] = round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)
    if torch.cuda.is_available():
        figures["peak_cuda_mb"] = round(torch.cuda.max_memory_allocated() / 2**20, 1)
    out = report(figures, "model_throughput", args.output)
    print(f"(written to {out})")


def n_parameters(folder: Path) -> int:
    """N of the FLOP convention: every parameter of the base model."""
    model = load_state(folder, (), "fp32")
    return sum(p.numel() for p in model.parameters())


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
