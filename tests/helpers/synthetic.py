"""Small synthetic artifacts with the workflow's columns, for tests of figures and views."""

from __future__ import annotations

import numpy as np
import pandas as pd

SEQUENCE = ["taskA", "taskB"]
UNSEEN = ["taskC"]
METRICS = ("rougeL", "exact_match", "label_accuracy")


def accuracy_matrix(run: str = "demo-inclora-sapo-s0") -> pd.DataFrame:
    rng = np.random.default_rng(0)
    rows = []
    for protocol in ("original_prompt", "trained_prompt"):
        for stage in range(len(SEQUENCE) + 1):
            for task in SEQUENCE + UNSEEN:
                for metric in METRICS:
                    rows.append(
                        {
                            "run": run,
                            "protocol": protocol,
                            "stage": stage,
                            "task": task,
                            "role": "sequence" if task in SEQUENCE else "unseen",
                            "metric": metric,
                            "score": float(rng.uniform(0, 100)),
                            "stderr": 3.0,
                            "n": 64,
                            "majority_rate": 50.0
                            if metric != "rougeL" or task != "taskC"
                            else np.nan,
                        }
                    )
    return pd.DataFrame(rows)


def train_log(steps: int = 6, penalty: bool = False) -> pd.DataFrame:
    log = pd.DataFrame(
        {"step": range(1, steps + 1), "loss": np.linspace(2.0, 0.5, steps), "lr": 1e-3}
    )
    if penalty:
        log["penalty"] = np.linspace(0.3, 0.1, steps)
        log["task_loss"] = log["loss"] - log["penalty"]
    return log


def candidates(n: int = 4) -> pd.DataFrame:
    return pd.DataFrame(
        {
            "candidate_id": range(n),
            "text": [
                f"Instruction number {i}: classify the review as good or bad." for i in range(n)
            ],
            "valid": True,
            "heldout": False,
        }
    )


def prompt_scores(n: int = 4) -> pd.DataFrame:
    return pd.DataFrame(
        {
            "candidate_id": range(n),
            "mean_batch_loss": [1.7, 1.2, 1.5, 1.9][:n],
            "mean_instance_loss": [1.7, 1.2, 1.5, 1.9][:n],
            "mean_token_loss": [1.6, 1.1, 1.4, 1.8][:n],
        }
    )


def summary(
    runs=("r1", "r2", "r3"), configs=(("inclora", "original"), ("inclora", "sapo")), seeds=1
) -> pd.DataFrame:
    """Run summaries: ``runs`` runs per seed, cycling through ``configs``."""
    rows = []
    for i, (run, seed) in enumerate((r, s) for s in range(seeds) for r in runs):
        method, strategy = configs[runs.index(run) % len(configs)]
        for protocol in ("original_prompt", "trained_prompt"):
            for metric in METRICS:
                row = {"run": f"{run}-s{seed}", "protocol": protocol, "metric": metric}
                row.update({"sequence": "demo", "method": method, "strategy": strategy})
                row.update({"seed": seed, "prompts": 2})
                for col in ("AP", "BWT", "FWT", "F", "plasticity", "ACC", "unseen_mean"):
                    row[col], row[f"{col}_se"] = 10.0 * i - 5 + seed, 2.0
                row["robust_mean"], row["robust_std"] = 40.0 + i, 3.0
                rows.append(row)
    return pd.DataFrame(rows)
