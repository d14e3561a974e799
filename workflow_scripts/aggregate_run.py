"""Rule aggregate_run: accuracy matrix and continual-learning summary of one run."""

import json
from pathlib import Path

import pandas as pd

from promptcl import paths
from promptcl.aggregate import (
    PROTOCOLS,
    cell_table,
    robustness,
    run_summary,
    split_prompts,
    trained_prompt_tables,
)
from promptcl.compare import instance_scores
from promptcl.runtime import input_list, job_logging
from promptcl.summary_text import format_matrix, format_summary


def main(snakemake) -> None:
    layout = snakemake.params.layout
    run = snakemake.wildcards.run
    with job_logging(snakemake.log[0]) as log:
        sequence, unseen = layout["sequence"], layout["unseen"]
        tasks = sequence + unseen
        tables = {}
        for task, path in zip(tasks, input_list(snakemake.input.zero_shot), strict=True):
            tables[(0, task)] = pd.read_parquet(path)
        stages = layout["stages"]
        for k, folder in zip(stages, input_list(snakemake.input.stages), strict=True):
            for task in tasks:
                tables[(k, task)] = pd.read_parquet(Path(folder) / f"{task}.parquet")
        infos = [
            json.loads((Path(a) / paths.STAGE_RECORD).read_text())
            for a in input_list(snakemake.input.adapters)
        ]
        trained = {}
        for info in infos:
            prompts = info.get("evaluation_prompts") or {info["task"]: info["evaluation_prompt"]}
            trained.update({task: p["candidate_id"] for task, p in prompts.items()})
        # R under each protocol: the original prompt everywhere, and the prompt each seen task
        # was trained with (the SAPO paper's); held-out prompts give robustness
        protocol_tables = {
            "original_prompt": split_prompts(tables)["original"],
            "trained_prompt": trained_prompt_tables(tables, sequence, trained),
        }
        cells, summaries = [], []
        for protocol, chosen in protocol_tables.items():
            part = cell_table(chosen, sequence, unseen, stages)
            summaries.append(run_summary(part, sequence, unseen).assign(protocol=protocol))
            cells.append(part.assign(protocol=protocol))
        cells = pd.concat(cells, ignore_index=True)
        summary = pd.concat(summaries, ignore_index=True)
        robust = robustness(tables, sequence, unseen)
        summary = summary.merge(robust, on="metric", how="left")
        summary["train_seconds"] = round(sum(i["train_seconds"] for i in infos), 3)
        summary["scoring_seconds"] = round(sum(i.get("scoring_seconds", 0.0) for i in infos), 3)
        summary["prompts_trained"] = json.dumps(
            [i["prompt"].get("candidate_id", i["prompt"].get("candidate_ids")) for i in infos]
        )
        for key, value in reversed(
            [
                ("sequence", layout["name"]),
                ("method", layout["method"]),
                ("strategy", layout["strategy"]),
                ("seed", layout["seed"]),
            ]
        ):
            summary.insert(0, key, value)
        cells.insert(0, "protocol", cells.pop("protocol"))
        summary.insert(0, "protocol", summary.pop("protocol"))
        cells.insert(0, "run", run)
        summary.insert(0, "run", run)
        cells.to_parquet(snakemake.output.matrix, index=False)
        instance_scores(protocol_tables).to_parquet(snakemake.output.instances, index=False)
        summary.to_parquet(snakemake.output.summary, index=False)
        text = [format_summary(summary, run)]
        text.append(f"training prompts per stage (candidate ids): {summary['prompts_trained'][0]}")
        text.append(f"evaluated with (trained_prompt protocol): {json.dumps(trained)}")
        if robust["prompts"].max() > 1:
            for _, row in robust.iterrows():
                text.append(
                    f"robustness ({row['metric']}): AP over {row['prompts']} prompts "
                    f"{row['robust_mean']:.2f} ± SD {row['robust_std']:.2f}"
                )
        text.append("")
        for protocol in PROTOCOLS:
            part = cells[cells["protocol"] == protocol]
            if protocol == "trained_prompt" and not any(trained.values()):
                text.append(
                    "trained_prompt: R equals original_prompt (trained with the original)\n"
                )
                continue
            for metric in ("rougeL", "label_accuracy", "exact_match"):
                text.append(f"{protocol}: " + format_matrix(part, metric))
        Path(snakemake.output.text).write_text("\n".join(text))
        log.info("\n%s", "\n".join(text))


if __name__ == "__main__":
    main(snakemake)  # noqa: F821
