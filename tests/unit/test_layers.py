"""The library's layers (docs/development.md, "Layers"): packages the Snakefile imports while
building the DAG never import torch, nothing imports a layer above its own, and no two modules
import each other, even lazily inside a function."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

from tests.helpers import REPO

LIBRARY = REPO / "workflow_scripts" / "promptcl"
#: Importable without torch: the DAG, task files, candidate prompts, the numbers, the store and
#: the two registries (their modules import torch inside the functions that train).
TORCH_FREE = ("dag", "tasks", "prompts", "analysis", "store", "methods", "strategies", "figures")
#: At import, each torch-free layer imports only those listed (promptcl.errors: anyone); the
#: torch layers (model, train, evaluate) come above all of them but the DAG's.
LOWER = {
    "errors": set(),
    "store": set(),
    "analysis": {"store"},
    "tasks": {"analysis", "store"},
    "prompts": {"store"},
    "dag": {"store", "tasks", "prompts", "analysis", "methods", "strategies"},
}


def modules() -> dict[str, Path]:
    found = {}
    for path in LIBRARY.rglob("*.py"):
        parts = path.relative_to(LIBRARY.parent).with_suffix("").parts
        found[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
    return found


def imports(path: Path, known: dict[str, Path], lazy: bool = True) -> set[str]:
    """Every promptcl module ``path`` imports at module level, and with ``lazy`` inside a
    function too."""
    tree = ast.parse(path.read_text())
    for node in ast.walk(tree):  # annotations only: never executed, so never a cycle
        if isinstance(node, ast.If) and ast.unparse(node.test).endswith("TYPE_CHECKING"):
            node.body = []
    out = set()
    for node in ast.walk(tree) if lazy else tree.body:
        if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("promptcl"):
            out.add(node.module)
            out |= {f"{node.module}.{a.name}" for a in node.names} & set(known)
        elif isinstance(node, ast.Import):
            out |= {a.name for a in node.names if a.name.startswith("promptcl")}
    return {m for m in out if m in known}


def cycles(graph: dict[str, set[str]]) -> list[str]:
    """Every import path that leads from a module back to itself."""
    found = []
    for start in graph:
        stack, seen = [(start, (start,))], set()
        while stack:
            node, trail = stack.pop()
            for nxt in graph[node]:
                if nxt == start:
                    found.append(" -> ".join((*trail, start)))
                elif nxt not in seen:
                    seen.add(nxt)
                    stack.append((nxt, (*trail, nxt)))
    return sorted(set(found))


def test_no_module_imports_itself_through_others():
    known = modules()
    found = cycles({name: imports(path, known) - {name} for name, path in known.items()})
    assert not found, "import cycles:\n" + "\n".join(found)


def test_lower_layers_never_import_higher_ones():
    known = modules()
    wrong = []
    for name, path in known.items():
        layer = name.split(".")[1] if name.count(".") else ""
        if layer not in LOWER:
            continue
        for dep in imports(path, known, lazy=False):
            dep_layer = dep.split(".")[1] if dep.count(".") else ""
            if dep_layer not in {layer, "", "errors"} | LOWER[layer]:
                wrong.append(f"{name} imports {dep}")
    assert not wrong, "\n".join(wrong)


def test_the_dag_never_imports_the_job_side_even_lazily():
    known = modules()
    above = ("model", "train", "evaluate", "figures", "study", "show")
    wrong = [
        f"{name} imports {dep}"
        for name, path in known.items()
        if name.startswith("promptcl.dag.")
        for dep in imports(path, known)
        if dep.split(".")[1] in above
    ]
    assert not wrong, "\n".join(wrong)


def test_the_torch_free_layers_import_without_torch():
    names = sorted(n for n in modules() if n.count(".") and n.split(".")[1] in TORCH_FREE)
    assert len(names) > 30
    code = (
        "import importlib, sys\n"
        f"for name in {names!r}:\n"
        "    importlib.import_module(name)\n"
        "    assert 'torch' not in sys.modules, f'{name} imported torch'\n"
        "    assert 'transformers' not in sys.modules, f'{name} imported transformers'\n"
    )
    proc = subprocess.run(
        [sys.executable, "-c", code],
        cwd=REPO / "workflow_scripts",
        capture_output=True,
        text=True,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]


def test_the_checks_see_a_cycle(tmp_path):
    """The search is not vacuous: a lazy import inside a function closes a cycle it finds."""
    a, b, c = (tmp_path / f"{n}.py" for n in "abc")
    a.write_text("def f():\n    from promptcl.x.b import g\n")
    b.write_text("from promptcl.x import c\n")
    c.write_text("import promptcl.x.a\n")
    known = {f"promptcl.x.{p.stem}": p for p in (a, b, c)}
    graph = {name: imports(path, known) for name, path in known.items()}
    assert graph["promptcl.x.a"] == {"promptcl.x.b"}
    assert "promptcl.x.a -> promptcl.x.b -> promptcl.x.c -> promptcl.x.a" in cycles(graph)
    del graph["promptcl.x.c"], known["promptcl.x.c"]
    graph["promptcl.x.b"] = set()
    assert cycles(graph) == []
