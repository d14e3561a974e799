"""The worked examples of docs/development.md, run from the document itself: a method and a
prompt strategy are each added by one module and its registration."""

from __future__ import annotations

import re
import sys
import types

import pandas as pd
import torch

from promptcl.methods import METHODS, build_stage_model
from promptcl.model.modeling import adapter_name
from promptcl.prompts.candidates import COLUMNS
from promptcl.strategies import STRATEGIES, parse_strategy
from tests.helpers import REPO
from tests.helpers.stages import LORA, train
from tests.helpers.strategies import training_instruction

DOC = (REPO / "docs/development.md").read_text()


def module_from_doc(path: str, name: str) -> types.ModuleType:
    """The python block of the document that starts with ``# <path>``, as module ``name``."""
    match = re.search(r"```python\n# " + re.escape(path) + r"\n(.*?)```", DOC, flags=re.S)
    assert match, f"docs/development.md has no example {path}"
    module = types.ModuleType(name)
    module.__package__ = name.rsplit(".", 1)[0]
    sys.modules[name] = module
    exec(compile(match.group(1), path, "exec"), module.__dict__)
    return module


def test_the_documented_method_is_one_module(monkeypatch, tiny_model_dir, tiny_tokenizer, tmp_path):
    module = module_from_doc(
        "workflow_scripts/promptcl/methods/warmlora.py", "promptcl.methods.warmlora"
    )
    monkeypatch.setitem(METHODS, "warmlora", module.WarmLoRA())
    first = train(tiny_model_dir, tiny_tokenizer, [], 1, tmp_path, "yes")
    model = build_stage_model(tiny_model_dir, [first], LORA, 2, method="warmlora")
    params = dict(model.named_parameters())
    new = {n: p for n, p in params.items() if f".{adapter_name(2)}." in n}
    assert new and all(p.requires_grad for p in new.values())
    for name, param in new.items():
        old = params[name.replace(".stage_2.", ".stage_1.")]
        assert torch.equal(param, old) and not old.requires_grad
    assert METHODS["warmlora"].state_before(3) == [1, 2], "the DAG side comes from IncLoRA"


def test_the_documented_strategy_is_one_module(monkeypatch):
    module = module_from_doc(
        "workflow_scripts/promptcl/strategies/shortest.py", "promptcl.strategies.shortest"
    )
    monkeypatch.setitem(STRATEGIES, "shortest", module.Shortest())
    assert parse_strategy("shortest") == ("shortest", None)
    texts = ["The original, rather long instruction.", "Short one.", "Tiny.", "Medium one here."]
    candidates = pd.DataFrame(
        [(i, t, "", "", i - 1, i != 2, "", False) for i, t in enumerate(texts)], columns=COLUMNS
    )
    # candidate 2 is the shortest but invalid: the shortest valid one is 1
    assert training_instruction(candidates, "shortest") == (1, "Short one.")
