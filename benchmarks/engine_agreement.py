"""How far two results folders of the same config agree in their predictions, cell by cell: the
`hf` and the `vllm` engine on the demo, for example.

    .venv/bin/python benchmarks/engine_agreement.py results demo_vllm/results [--output f.parquet]

A cell is one prediction file and prompt (zero-shot or a run's stage, a task, an evaluation
prompt). For each: the items, the share of identical answers, and for each metric the paired
difference (second − first, points) with a 95% bootstrap interval over the cell's items. It also
says whether the two folders trained the same adapters (bytes of every adapter_model.safetensors),
since otherwise answers differ for reasons other than the engine. Prints figures, asserts nothing.
"""

from __future__ import annotations

import argparse
import hashlib
import sys
from pathlib import Path

import numpy as np
import pandas as pd

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "workflow_scripts"))

from promptcl.analysis import stats  # noqa: E402

METRICS = ("label_accuracy", "rougeL", "exact_match")


def prediction_files(root: Path) -> dict[str, Path]:
    """Every predictions parquet below ``root``, keyed by its path relative to it."""
    return {str(p.relative_to(root)): p for p in sorted(root.glob("**/predictions/*.parquet"))}


def adapters_identical(first: Path, second: Path) -> tuple[int, int]:
    """(adapters in both folders, of which byte-identical)."""

    def digest(path: Path) -> str:
        return hashlib.sha256(path.read_bytes()).hexdigest()

    a = {str(p.relative_to(first)): p for p in first.glob("**/adapter/adapter_model.safetensors")}
    both = [k for k in sorted(a) if (second / k).exists()]
    return len(both), sum(digest(a[k]) == digest(second / k) for k in both)


def cell_agreement(first: pd.DataFrame, second: pd.DataFrame, seed: int = 0) -> dict[str, float]:
    """Identical answers and the paired metric differences of one cell (aligned by item id)."""
    merged = first.merge(second, on="id", suffixes=("_a", "_b"), validate="one_to_one")
    row: dict[str, float] = {
        "items": len(merged),
        "identical": float((merged["prediction_a"] == merged["prediction_b"]).mean()),
    }
    draws = stats.bootstrap_indices(len(merged), seed=seed)
    for metric in METRICS:
        if f"{metric}_a" not in merged:
            continue
        d = (merged[f"{metric}_b"] - merged[f"{metric}_a"]).to_numpy(dtype=float)
        row[f"{metric}_a"] = float(merged[f"{metric}_a"].mean())
        row[f"{metric}_diff"] = float(d.mean())
        row[f"{metric}_low"], row[f"{metric}_high"] = stats.interval(d[draws].mean(axis=1))
    return row


def agreement(first: Path, second: Path) -> pd.DataFrame:
    """One row per cell present in both folders."""
    a, b = prediction_files(first), prediction_files(second)
    rows = []
    for key in sorted(set(a) & set(b)):
        pa, pb = pd.read_parquet(a[key]), pd.read_parquet(b[key])
        for prompt in sorted(set(pa["prompt_id"]) & set(pb["prompt_id"])):
            row = cell_agreement(pa[pa["prompt_id"] == prompt], pb[pb["prompt_id"] == prompt])
            rows.append({"file": key, "prompt_id": prompt, **row})
    return pd.DataFrame(rows)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("first", type=Path)
    parser.add_argument("second", type=Path)
    parser.add_argument("--output", type=Path, help="parquet of the per-cell table")
    args = parser.parse_args()
    table = agreement(args.first, args.second)
    if table.empty:
        raise SystemExit(f"no prediction files in common under {args.first} and {args.second}")
    both, same = adapters_identical(args.first, args.second)
    pd.set_option("display.width", 200)
    pd.set_option("display.max_rows", 500)
    print(table.round(3).to_string(index=False))
    items = table["items"].to_numpy(dtype=float)
    print(f"cells {len(table)}, items {int(items.sum())}")
    print(f"identical answers overall {np.average(table['identical'], weights=items):.3f}")
    print(f"cells with every answer identical {(table['identical'] == 1).sum()}/{len(table)}")
    for metric in METRICS:
        if f"{metric}_diff" in table:
            excludes = ((table[f"{metric}_low"] > 0) | (table[f"{metric}_high"] < 0)).sum()
            print(
                f"{metric}: mean cell difference {table[f'{metric}_diff'].mean():+.2f} points, "
                f"|max| {table[f'{metric}_diff'].abs().max():.1f}, "
                f"cells whose 95% interval excludes 0: {excludes}/{len(table)}"
            )
    print(f"adapters in both folders {both}, byte-identical {same}")
    if args.output:
        table.to_parquet(args.output, index=False)


if __name__ == "__main__":
    main()
