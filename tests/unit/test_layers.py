"""The layer rule of docs/development.md: the DAG-time packages import without torch (Snakemake
imports them while it parses the workflow), and dag/ never imports the job-side packages."""

from __future__ import annotations

import ast
import subprocess
import sys

from tests.helpers import REPO

LIBRARY = REPO / "workflow_scripts" / "promptcl"
TORCH_FREE = ("dag", "tasks", "prompts", "analysis", "store", "methods", "strategies")
ABOVE_DAG = ("model", "train", "evaluate", "figures", "study", "show")


def _modules(package: str) -> list[str]:
    return sorted(
        ".".join(("promptcl", *path.relative_to(LIBRARY).with_suffix("").parts)).removesuffix(
            ".__init__"
        )
        for path in (LIBRARY / package).rglob("*.py")
    )


def test_the_dag_time_packages_import_without_torch():
    modules = [m for package in TORCH_FREE for m in _modules(package)]
    code = (
        "import importlib, sys\n"
        f"for name in {modules!r}:\n"
        "    importlib.import_module(name)\n"
        "    assert 'torch' not in sys.modules, f'{name} imported torch'\n"
        "    assert 'transformers' not in sys.modules, f'{name} imported transformers'\n"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr[-2000:]


def test_dag_never_imports_upwards():
    for path in (LIBRARY / "dag").glob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            names = [node.module or ""] if isinstance(node, ast.ImportFrom) else []
            names += [a.name for a in node.names] if isinstance(node, ast.Import) else []
            for name in names:
                parts = name.split(".")
                assert not (parts[0] == "promptcl" and parts[1:2] and parts[1] in ABOVE_DAG), (
                    f"{path.name} imports {name}"
                )
