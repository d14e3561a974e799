"""``python -m promptcl show PATH``: any artifact of a run, readable without writing pandas
(and ``python -m promptcl power [results]``: :mod:`promptcl.analysis.power`; ``python -m promptcl
verify [results]``: :mod:`promptcl.store.verify`; ``python -m promptcl config-reference
[--check]``: :mod:`promptcl.dag.config_reference`).

- an accuracy matrix: R per protocol and metric as stage × task, "score±se", chance level beneath;
- any other parquet: its shape, then the rows (long texts shortened, wide tables wrapped);
- a run folder (``results/<run>``) or ``results/``: the summary the workflow wrote;
- an adapter folder or a JSON file: the stage record / JSON, indented.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import pandas as pd

from promptcl.analysis.aggregate import PROTOCOLS
from promptcl.dag import config_reference
from promptcl.store import paths

TEXT_WIDTH = 60


class ShowError(ValueError):
    """The path is not an artifact this command knows how to show."""


def _shorten(value):
    if isinstance(value, str) and len(value) > TEXT_WIDTH:
        return value[: TEXT_WIDTH - 1] + "…"
    return value


def show_table(table: pd.DataFrame, max_rows: int = 60) -> str:
    """Shape, then the rows with long strings cut to TEXT_WIDTH characters."""
    shown = table.head(max_rows).map(_shorten)
    with pd.option_context("display.width", 120, "display.max_columns", None):
        body = shown.to_string(index=False)
    more = f"\n… {len(table) - max_rows} more rows" if len(table) > max_rows else ""
    return f"{len(table)} rows × {table.shape[1]} columns\n{body}{more}\n"


def show_matrix(cells: pd.DataFrame) -> str:
    """R of a run for every protocol and metric present."""
    from promptcl.analysis.summary_text import format_matrix

    run = cells["run"].iloc[0] if "run" in cells and len(cells) else "?"
    parts = [f"Accuracy matrix of run {run} (rows: after stage i, 0 = base model)"]
    protocols = cells["protocol"].unique() if "protocol" in cells else [None]
    for protocol in protocols:
        part = cells if protocol is None else cells[cells["protocol"] == protocol]
        for metric in part["metric"].unique():
            title = f"\n{protocol}: {PROTOCOLS.get(protocol, '')}" if protocol else ""
            parts.append(f"{title}\n{format_matrix(part, metric)}")
    return "\n".join(parts)


def show_path(path: Path) -> str:
    """The text to print for ``path``; raises :class:`ShowError` for anything else."""
    if not path.exists():
        raise ShowError(f"{path}: no such file or folder")
    if path.is_dir():
        for candidate in (
            path / Path(paths.RUN_SUMMARY_TEXT).relative_to(f"{paths.RESULTS}/{{run}}"),
            path / Path(paths.SUMMARY_TEXT).name,
            path / paths.STAGE_RECORD,
        ):
            if candidate.is_file():
                return show_path(candidate)
        parquets = sorted(path.glob("*.parquet"))
        if parquets:
            return "\n".join(f"== {p.name}\n{show_path(p)}" for p in parquets)
        raise ShowError(
            f"{path}: neither a run folder (metrics/summary.txt), results/ (summary.txt), an "
            "adapter (promptcl_stage.json) nor a folder of parquet files"
        )
    if path.suffix == ".parquet":
        table = pd.read_parquet(path)
        if path.name == Path(paths.MATRIX).name:
            return show_matrix(table)
        return show_table(table)
    if path.suffix == ".json":
        return json.dumps(json.loads(path.read_text()), indent=2) + "\n"
    if path.suffix in (".txt", ".log", ".tsv", ".md"):
        return path.read_text()
    raise ShowError(f"{path}: unknown artifact type {path.suffix!r}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m promptcl", description=__doc__.split("\n")[0])
    commands = parser.add_subparsers(dest="command", required=True)
    show = commands.add_parser("show", help="print an artifact (parquet, run folder, adapter)")
    show.add_argument("path", type=Path)
    power = commands.add_parser(
        "power", help="the per-item noise of each metric and the items/seeds a difference needs"
    )
    power.add_argument("results", type=Path, nargs="?", default=Path(paths.RESULTS))
    verify = commands.add_parser(
        "verify", help="check every artifact against its checksum record; name what to rerun"
    )
    verify.add_argument("results", type=Path, nargs="?", default=Path(paths.RESULTS))
    reference = commands.add_parser(
        "config-reference",
        help="regenerate docs/configuration.md's reference from config/schema.yaml (make docs)",
    )
    reference.add_argument("--check", action="store_true", help="only fail when it is stale")
    reference.add_argument("--schema", type=Path, default=Path(config_reference.SCHEMA))
    reference.add_argument("--doc", type=Path, default=Path(config_reference.DOC))
    args = parser.parse_args(argv)
    try:
        if args.command == "config-reference":
            text, status = config_reference.main(args.check, args.schema, args.doc)
            sys.stdout.write(text)
            return status
        if args.command == "verify":
            from promptcl.store.verify import report as verify_report

            text, status = verify_report(args.results)
            sys.stdout.write(text)
            return status
        if args.command == "power":
            from promptcl.analysis.power import report

            sys.stdout.write(report(args.results))
        else:
            sys.stdout.write(show_path(args.path))
    except (ShowError, ValueError, FileNotFoundError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    return 0
