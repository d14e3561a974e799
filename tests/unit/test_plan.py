"""The workflow plan (the DAG as data) without Snakemake: what each method and strategy asks of
the DAG, the params each rule gets, and that building it never imports torch."""

from __future__ import annotations

import subprocess
import sys
from types import SimpleNamespace

import pytest
import yaml

from promptcl.dag.plan import WorkflowPlan
from promptcl.errors import ConfigError
from promptcl.methods import METHODS
from promptcl.store import paths
from promptcl.strategies import STRATEGIES
from tests.helpers import REPO
from tests.helpers.plans import plan_of


def wc(**kw):
    return SimpleNamespace(**kw)


def test_building_the_plan_never_imports_torch():
    code = (
        "import sys; sys.path.insert(0, 'workflow_scripts');"
        "import promptcl.dag.plan, promptcl.methods, promptcl.strategies, promptcl.store.paths;"
        "assert 'torch' not in sys.modules, 'torch imported'"
    )
    proc = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr


def test_each_method_declares_the_states_of_its_stages():
    plan = plan_of()
    adapter = lambda run, k: paths.fill(paths.ADAPTER, run=run, stage=k)  # noqa: E731
    inc, seq = "demo-inclora-sapo-s0", "demo-seqlora-sapo-s0"
    assert plan.state_before(wc(run=inc, stage="3")) == [adapter(inc, 1), adapter(inc, 2)]
    assert plan.state_after(wc(run=inc, stage="2")) == [adapter(inc, 1), adapter(inc, 2)]
    assert plan.state_before(wc(run=seq, stage="3")) == [adapter(seq, 2)]
    assert plan.state_before(wc(run=seq, stage="1")) == []
    assert plan.state_after(wc(run=seq, stage="2")) == [adapter(seq, 2)]
    assert plan.stage_records(wc(run=seq, stage="2")) == [adapter(inc, 1), adapter(seq, 2)]


def _owners(plan: WorkflowPlan, stage: int) -> dict[str, str]:
    return {name: plan.owner(name, stage) for name in plan.runs}


def test_methods_that_start_as_inclora_share_its_first_stage():
    """Stage 1 of olora (lambda2 = 0), seqlora, replay, agem and single trains what IncLoRA's
    does (a new LoRA on task 1 from the base model): one job trains it, one predicts after it,
    and every later stage and the accuracy matrix read it there. EWC (its Fisher), LwF (distils
    towards the base model), I-LoRA (its slow learner), OSF (not a LoRA) and multitask (trains
    stage T only) keep their own."""
    runs = {"sequences": ["demo"], "methods": list(METHODS), "prompt_strategies": ["paft"]}
    plan = plan_of(runs={**runs, "seeds": [0, 1]})
    host = {seed: f"demo-inclora-paft-s{seed}" for seed in (0, 1)}
    for name, owner in _owners(plan, 1).items():
        method, seed = plan.runs[name].method, plan.runs[name].seed
        shared = method in {"inclora", "olora", "seqlora", "replay", "agem", "single"}
        assert owner == (host[seed] if shared else name), name
    assert set(_owners(plan, 2).values()) == set(plan.runs), "later stages are each run's own"
    assert plan.host_runs == {}, "the IncLoRA runs are configured"

    replay = wc(run="demo-replay-paft-s0", stage="2")
    assert plan.state_before(replay) == [paths.fill(paths.ADAPTER, run=host[0], stage=1)]
    (companion,) = [c for c in plan.stage_companions(replay) if c["stage"] == 1]
    assert companion["record"] == paths.fill(paths.ADAPTER, run=host[0], stage=1)
    assert plan.stage_predictions(wc(run="demo-single-paft-s0"))[0] == paths.fill(
        paths.PREDICTIONS, run=host[0], stage=1
    )
    with pytest.raises(ConfigError, match="stage 1 of run demo-replay-paft-s0 is stage 1 of "):
        plan.stage_task(wc(run="demo-replay-paft-s0", stage="1"))

    # without IncLoRA in the config, its run hosts stage 1 alone, under the same name: adding
    # it later reruns nothing
    alone = plan_of(runs={**runs, "methods": ["replay", "olora"], "seeds": [0]})
    assert set(_owners(alone, 1).values()) == {host[0]}
    assert set(alone.host_runs) == {host[0]} and host[0] in alone.all_runs
    assert host[0] not in alone.runs, "a host has no summary row"
    assert alone.stage_task(wc(run=host[0], stage="1")) == "task195"


def test_a_method_shares_its_first_stage_only_by_its_own_declaration():
    """A new method built on IncLoRA may change stage 1: it trains its own until it declares."""
    from promptcl.methods.inclora import IncLoRA

    class Warm(IncLoRA):
        name = "warm"

    class Declared(IncLoRA):
        name = "declared"

        def shares_first_stage(self, config: dict) -> bool:
            return True

    assert METHODS["inclora"].first_stage_is_shared({})
    assert not Warm().first_stage_is_shared({})
    assert Declared().first_stage_is_shared({})


def test_olora_shares_its_first_stage_only_without_the_l2_term():
    runs = {"sequences": ["demo"], "methods": ["olora"], "prompt_strategies": ["sapo"]}
    runs["seeds"] = [0]
    assert plan_of(runs=runs).owner("demo-olora-sapo-s0", 1) == "demo-inclora-sapo-s0"
    own = plan_of(runs=runs, olora={"lambda1": 0.5, "lambda2": [0.1, 0.0]})
    assert own.owner("demo-olora-sapo-s0", 1) == "demo-olora-sapo-s0"
    assert own.host_runs == {}


def test_scores_are_asked_only_by_strategies_that_need_them():
    plan = plan_of()
    assert plan.stage_scores(wc(run="demo-inclora-original-s0", stage="2")) == {}
    first = plan.stage_scores(wc(run="demo-inclora-sapo-s0", stage="1"))
    assert first == {"scores": paths.fill(paths.BASE_SCORES, task="task195")}, "shared"
    later = plan.stage_scores(wc(run="demo-olora-sapo-s0", stage="2"))
    assert later == {"scores": "results/demo-olora-sapo-s0/stage_2/prompt_scores.parquet"}


def test_train_options_hold_only_the_sections_a_run_reads():
    plan = plan_of(sapo={"rescore_every": 5})
    assert plan.train_options(wc(run="demo-inclora-original-s0")) == {}
    assert set(plan.train_options(wc(run="demo-olora-original-s0"))) == {"olora"}
    assert set(plan.train_options(wc(run="demo-olora-sapo-s0"))) == {"sapo", "scoring", "olora"}
    plain = plan_of()
    assert set(plain.train_options(wc(run="demo-inclora-sapo-s0"))) == {"sapo"}


def test_the_attention_kernel_reaches_every_job_but_not_the_model_folder():
    """A per-job setting: switching it reruns the jobs that compute, never the conversion."""
    plan = plan_of()
    assert plan.model_params()["attn_implementation"] == "auto", "the schema's default"
    forced = plan_of(model={"attn_implementation": "sdpa"})
    assert forced.model_params()["attn_implementation"] == "sdpa"
    assert forced.model_source_params() == plan.model_source_params()
    assert "attn_implementation" not in plan.model_source_params()


def test_registries_match_the_schema():
    schema = yaml.safe_load((REPO / "config/schema.yaml").read_text())
    runs = schema["properties"]["runs"]["properties"]
    assert set(runs["methods"]["items"]["enum"]) == set(METHODS)
    extra = runs["extra"]["items"]["properties"]
    assert set(extra["method"]["enum"]) == set(METHODS)  # runs.extra names every method too
    pattern = runs["prompt_strategies"]["items"]["pattern"]
    for name, strategy in STRATEGIES.items():
        assert (name + ":<id>" if strategy.takes_argument else name).split(":")[0] in pattern


def test_a_stage_beyond_the_sequence_is_named():
    with pytest.raises(ConfigError, match=r"trains stages \[1, 2, 3\], not 4"):
        plan_of().stage_task(wc(run="demo-inclora-sapo-s0", stage="4"))


def test_evaluation_outcomes_choose_the_evaluation_rules_and_the_metrics():
    """generation, likelihood or both: R's inputs, the metrics and the compared metrics follow."""
    run = wc(run="demo-inclora-sapo-s0")
    both = plan_of(evaluation={"outcomes": ["generation", "likelihood"]})
    inputs = both.run_evaluations(run)
    assert set(inputs) == {"zero_shot", "stages", "zero_shot_likelihood", "stage_likelihood"}
    assert inputs["stage_likelihood"][0] == paths.fill(
        paths.LIKELIHOOD, run="demo-inclora-sapo-s0", stage=1
    )
    assert both.metrics == (
        "rougeL", "exact_match", "label_accuracy", "gold_logprob", "rank_accuracy"
    )  # fmt: skip
    assert both.compared_metrics == ["rougeL", "label_accuracy", "gold_logprob", "rank_accuracy"]
    assert both.layout(both.run(run))["metrics"] == list(both.metrics)
    only = plan_of(evaluation={"outcomes": ["likelihood"]})
    assert set(only.run_evaluations(run)) == {"zero_shot_likelihood", "stage_likelihood"}
    assert only.compared_metrics == ["gold_logprob", "rank_accuracy"]
    assert plan_of().metrics == ("rougeL", "exact_match", "label_accuracy")


def test_a_metric_the_outcomes_do_not_compute_is_a_config_error():
    with pytest.raises(ConfigError, match=r"comparison.metrics: rank_accuracy .*add its outcome"):
        plan_of(comparison={"metrics": ["rank_accuracy"]})
    with pytest.raises(ConfigError, match=r"study.metric: gold_logprob .*likelihood"):
        plan_of(
            study={"pairs": [["task195", "task1310"]], "metric": "gold_logprob"},
            evaluation={"outcomes": ["generation"]},
        )


def test_the_vllm_engine_generates_with_one_lora_per_state():
    """Stacked LoRAs (IncLoRA after stage 2) are combined into one, an artifact of the stage;
    a single or continued LoRA is served as it is; the hf engine loads the stack."""
    plan = plan_of(generation={"engine": "vllm"})
    inc, seq = "demo-inclora-sapo-s0", "demo-seqlora-sapo-s0"
    assert plan.generation_state(wc(run=inc, stage="3")) == [
        paths.fill(paths.COMBINED, run=inc, stage=3)
    ]
    assert plan.generation_state(wc(run=inc, stage="1")) == plan.state_after(wc(run=inc, stage="1"))
    assert plan.generation_state(wc(run=seq, stage="3")) == plan.state_after(wc(run=seq, stage="3"))
    hf = plan_of()
    assert hf.generation_state(wc(run=inc, stage="3")) == hf.state_after(wc(run=inc, stage="3"))
