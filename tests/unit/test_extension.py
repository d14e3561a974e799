"""The worked examples of docs/development.md, run from the document itself: a method, a prompt
strategy, a paraphrase backend and a metric are each added by one module (or one registry
entry) and its registration."""

from __future__ import annotations

import re
import sys
import types
from types import SimpleNamespace

import pandas as pd
import pytest
import torch

from promptcl.analysis import metrics as metrics_module
from promptcl.analysis.aggregate import cell_table, run_summary
from promptcl.analysis.metrics import (
    REGISTRY,
    compared_metrics,
    metrics_of,
    score_predictions,
)
from promptcl.dag.plan import check_metrics
from promptcl.errors import ConfigError
from promptcl.methods import METHODS, build_stage_model
from promptcl.model.modeling import adapter_name
from promptcl.prompts.backends import BACKENDS, ParaphraseJob, backend_of
from promptcl.prompts.candidates import COLUMNS
from promptcl.prompts.paraphrase import ValidationSpec
from promptcl.strategies import STRATEGIES, parse_strategy
from tests.helpers import REPO
from tests.helpers.plans import plan_of
from tests.helpers.stages import LORA, train
from tests.helpers.strategies import training_instruction

DOC = (REPO / "docs/development.md").read_text()


def doc_block(header: str) -> str:
    """The python block of the document whose first line is ``# <header>``."""
    match = re.search(r"```python\n# " + re.escape(header) + r"\n(.*?)```", DOC, flags=re.S)
    assert match, f"docs/development.md has no example {header}"
    return match.group(1)


def module_from_doc(path: str, name: str) -> types.ModuleType:
    """The python block of the document that starts with ``# <path>``, as module ``name``."""
    module = types.ModuleType(name)
    module.__package__ = name.rsplit(".", 1)[0]
    sys.modules[name] = module
    exec(compile(doc_block(path), path, "exec"), module.__dict__)
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


PARAPHRASER = """
import sys
request, seed = sys.stdin.read(), int(sys.argv[1])
assert "Is the review positive?" in request, request
print(f"Sure. <instruction>Variant {seed % 1000}: read the review, then reply "
      "positive or negative.</instruction>")
"""


def test_the_documented_backend_is_one_module(monkeypatch, tmp_path):
    module = module_from_doc(
        "workflow_scripts/promptcl/prompts/backends/command.py",
        "promptcl.prompts.backends.command",
    )
    monkeypatch.setitem(BACKENDS, "command", module.Command())
    program = tmp_path / "paraphraser.py"
    program.write_text(PARAPHRASER)
    plan = plan_of()
    prompts = plan.config["prompts"]
    prompts["backend"] = "command"
    prompts["command"] = {"run": f"{sys.executable} {program}", "timeout": 60}
    # the DAG side: a compute-node job that reruns when prompts.command changes
    assert not plan.paraphrase_on_host and plan.paraphrase_threads == 1
    assert plan.paraphrase_params()["command"] == prompts["command"]
    assert "file" not in plan.paraphrase_params()
    task = plan.prompt_tasks[0]
    template = plan.paraphrase_inputs(SimpleNamespace(task=task))["template"]
    plan.check_prompt_inputs()
    prompts["request_template"] = "resources/prompts/missing.txt"
    with pytest.raises(ConfigError, match="prompts.request_template: .*missing.txt"):
        plan.check_prompt_inputs()
    # the job side: requests, replies, validation and the cache
    job = ParaphraseJob(
        task="review",
        full_name="review_sentiment",
        original="Is the review positive? Answer positive or negative.",
        labels=["positive", "negative"],
        spec=ValidationSpec.from_config(prompts["validation"]),
        inputs={"template": template},
        options={**prompts, "candidates": 3},
        model={},
        cache_dir=tmp_path / "cache",
    )
    table = backend_of("command").candidates(job)
    assert table["candidate_id"].tolist() == [0, 1, 2, 3]
    assert table["valid"].all() and table["text"].nunique() == 4
    assert table["text"].iloc[1].startswith("Variant ")
    program.write_text("import sys\nsys.exit(3)\n")  # a rerun is answered from the cache
    assert backend_of("command").candidates(job)["text"].tolist() == table["text"].tolist()
    fresh = ParaphraseJob(**{**vars(job), "cache_dir": tmp_path / "empty"})
    failed = backend_of("command").candidates(fresh)
    assert not failed["valid"].iloc[1:].any()
    assert f"{sys.executable} exited 3" in failed["reject_reason"].iloc[1]


def test_the_documented_metric_is_one_registry_entry(monkeypatch):
    namespace = dict(vars(metrics_module))
    header = "workflow_scripts/promptcl/analysis/metrics.py (an entry of REGISTRY)"
    exec(compile(doc_block(header), "metrics.py", "exec"), namespace)
    monkeypatch.setitem(REGISTRY, "contains_reference", namespace["CONTAINS_REFERENCE"])
    answers = ["The answer is Paris.", "Lyon.", "Parisian", "paris"]
    table = pd.DataFrame(
        {
            "prediction": answers,
            "references": [["Paris"]] * 4,
            "labels": [[]] * 4,
        }
    )
    scored = score_predictions(table)
    assert scored["contains_reference"].tolist() == [100.0, 0.0, 0.0, 100.0]
    assert scored["rougeL"].iloc[3] == 100.0, "the registered metrics are still scored"
    # the DAG's {metric} wildcard and the config's metric keys accept it
    assert "contains_reference" in metrics_of(["generation"])
    assert "contains_reference" not in compared_metrics(["generation"])
    assert "contains_reference" in plan_of().metrics
    check_metrics(
        {
            "evaluation": {"outcomes": ["generation"]},
            "comparison": {"metrics": ["contains_reference"]},
        }
    )
    # R and its continual metrics carry it
    tables = {(stage, "qa"): scored.assign(id=[str(i) for i in range(4)]) for stage in (0, 1)}
    cells = cell_table(tables, ["qa"], [])
    assert set(cells["metric"]) >= {"contains_reference", "rougeL"}
    summary = run_summary(cells, ["qa"], []).set_index("metric")
    assert summary.loc["contains_reference", "AP"] == 50.0
