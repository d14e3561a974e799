"""Prompt-scoring throughput: the batched scorer against a naive per-candidate baseline.

The baseline scores one candidate at a time, in data order, every batch padded to the longest
sequence of the whole set, with full-vocabulary logits (what a straightforward implementation
does). Both compute the same losses; the figures are tokens/s of real (non-pad) tokens, and MFU (2N
model FLOPs per scored token, N = every base-model parameter) against the matmul rate this
process measures first.

    .venv/bin/python benchmarks/scoring_throughput.py [--task task1310] [--instances 32]
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "workflow_scripts"))
sys.path.insert(0, str(REPO / "benchmarks"))

from model_throughput import (  # noqa: E402
    best_rates,
    matmul_rates,
    model_dir,
    n_parameters,
    peak,
    report,
    with_mfu,
)

from promptcl.evaluate.inference import autocast  # noqa: E402
from promptcl.evaluate.scoring import ScoringStats, encode_pairs, score_candidates  # noqa: E402
from promptcl.model.devices import resolve_precision  # noqa: E402
from promptcl.model.modeling import load_state, load_tokenizer  # noqa: E402
from promptcl.prompts.pools import load_pool  # noqa: E402
from promptcl.prompts.prompting import IGNORE_INDEX, PromptFormat  # noqa: E402
from promptcl.tasks.files import TaskSource, read_split, resolve_task  # noqa: E402


@torch.inference_mode()
def naive_scores(model, pad: int, pairs, batch_size: int, precision: str) -> dict[int, float]:
    width = max(len(p[2]) for p in pairs)
    sums: dict[int, list[float]] = {}
    for cid in dict.fromkeys(p[0] for p in pairs):
        rows = [p for p in pairs if p[0] == cid]
        for start in range(0, len(rows), batch_size):
            chunk = rows[start : start + batch_size]
            ids = torch.full((len(chunk), width), pad)
            labels = torch.full((len(chunk), width), IGNORE_INDEX)
            mask = torch.zeros((len(chunk), width), dtype=torch.long)
            for r, (_, _, seq, lab) in enumerate(chunk):
                ids[r, : len(seq)], labels[r, : len(seq)], mask[r, : len(seq)] = (
                    torch.tensor(seq),
                    torch.tensor(lab),
                    1,
                )
            with autocast(model, precision):
                logits = model(input_ids=ids, attention_mask=mask).logits.float()
            ce = torch.nn.functional.cross_entropy(
                logits[:, :-1].reshape(-1, logits.shape[-1]),
                labels[:, 1:].reshape(-1),
                ignore_index=IGNORE_INDEX,
                reduction="sum",
            )
            n = int((labels[:, 1:] != IGNORE_INDEX).sum())
            acc = sums.setdefault(cid, [0.0, 0])
            acc[0] += float(ce)
            acc[1] += n
    return {cid: total / n for cid, (total, n) in sums.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", help="HF model folder (default: the embedded SmolLM2)")
    parser.add_argument("--task", default="task1310")
    parser.add_argument("--instances", type=int, default=32)
    parser.add_argument("--candidates", type=int, default=6)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--precision", default="auto", choices=["auto", "bf16", "fp32"])
    parser.add_argument("--output", type=Path, help="JSON file for the figures")
    args = parser.parse_args()
    folder = model_dir(args.model)
    precision = resolve_precision(args.precision)
    tokenizer = load_tokenizer(folder)
    model = load_state(folder, (), precision)
    files = resolve_task(
        args.task, [TaskSource("sentence_label", REPO / "resources/tasks/sentence_label")]
    )
    table = read_split(files, "train").head(args.instances)
    pool = load_pool(REPO / f"resources/prompts/pools/{files.full_name}.json")
    candidates = [(0, table["instruction"].iloc[0])]
    candidates += [(i + 1, t) for i, t in enumerate(pool[: args.candidates - 1])]
    fmt = PromptFormat()
    pairs = encode_pairs(tokenizer, fmt, table, candidates)
    real_tokens = sum(len(p[2]) for p in pairs)

    before = matmul_rates(torch.get_num_threads(), precision)
    score_candidates(model, tokenizer, fmt, table.head(2), candidates[:1])  # warm-up
    stats = ScoringStats()
    started = time.perf_counter()
    fast = score_candidates(
        model, tokenizer, fmt, table, candidates, args.batch_size, precision, stats
    )
    fast_s = time.perf_counter() - started
    started = time.perf_counter()
    slow = naive_scores(model, tokenizer.pad_token_id, pairs, args.batch_size, precision)
    naive_s = time.perf_counter() - started
    fast_losses = dict(zip(fast["candidate_id"], fast["mean_token_loss"], strict=True))
    diff = max(abs(slow[c] - v) for c, v in fast_losses.items())
    after = matmul_rates(torch.get_num_threads(), precision)
    rates = best_rates(before, after)
    reference = peak(rates, precision)
    params = n_parameters(folder)
    figures = {
        "precision": precision,
        **rates,
        "mfu_reference_tflops": reference,
        "mfu_reference_before_after": [peak(before, precision), peak(after, precision)],
        "model_parameters": params,
        "task": args.task,
        "candidates": len(candidates),
        "instances": len(table),
        "sequences": len(pairs),
        "real_tokens": real_tokens,
        "batched_seconds": round(fast_s, 2),
        "batched_tokens_per_s": round(real_tokens / fast_s, 1),
        "naive_seconds": round(naive_s, 2),
        "naive_tokens_per_s": round(real_tokens / naive_s, 1),
        "speedup": round(naive_s / fast_s, 2),
        "max_loss_difference": float(f"{diff:.2e}"),
    }
    figures = with_mfu(figures, {"batched": 2 * params, "naive": 2 * params}, reference)
    report(figures, "scoring_throughput", args.output)


if __name__ == "__main__":
    main()
