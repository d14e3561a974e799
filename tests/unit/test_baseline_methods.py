"""The rehearsal, regularisation and reference methods: replay's mixed data, EWC's penalty and
Fisher, LwF's distillation, on known numbers and the tiny random Llama."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from promptcl.methods import METHODS, build_stage_model
from promptcl.methods.ewc import (
    EwcSpec,
    accumulate,
    diagonal_fisher,
    ewc_penalty,
    lora_parameters,
)
from promptcl.methods.lwf import LwfSpec, distillation, without_adapter
from promptcl.methods.replay import (
    ReplaySpec,
    buffer_sizes,
    replay_order,
    replay_parts,
    replay_rows,
)
from promptcl.model.adapters import save_adapter
from promptcl.model.batching import PadCollator
from promptcl.model.modeling import adapter_name, load_state
from promptcl.prompts.prompting import PromptFormat
from promptcl.train.data import MixedDataset, PromptedDataset, encode_table
from promptcl.train.specs import LoraSpec
from tests.helpers import REPO
from tests.helpers.stages import replay_companion, stage_job, table

LORA = LoraSpec(r=2, alpha=4, dropout=0.0, target_modules=("q_proj", "v_proj"))
FMT = PromptFormat()


# --- replay ---------------------------------------------------------------------------------------


def test_replay_counts_split_the_total_and_respect_caps():
    spec = ReplaySpec(examples=10, max_per_task=3)
    # 10 over 3 tasks: 4, 3, 3; capped at 3; the second task has only 2 examples
    assert spec.counts(50, [100, 2, 100]) == [3, 2, 3]
    assert ReplaySpec(examples=10).counts(50, [100, 100, 100]) == [4, 3, 3]
    assert ReplaySpec(examples=None, fraction=0.25).counts(40, [100, 100]) == [5, 5]
    assert ReplaySpec(examples=0).counts(40, [100]) == [0]
    assert ReplaySpec().counts(40, []) == []


@pytest.mark.parametrize(
    "cfg, key",
    [
        ({"examples": 4, "fraction": 0.5}, "exactly one"),
        ({"examples": None}, "exactly one"),
        ({"examples": 4, "prompt": "best"}, "replay.prompt"),
        ({"examples": 4, "cap": 2}, "unknown keys"),
    ],
)
def test_replay_config_errors_name_the_key(cfg, key):
    with pytest.raises(ValueError, match=key):
        ReplaySpec.from_config(cfg)


def test_replayed_rows_are_a_prefix_of_one_seeded_permutation_per_task():
    """The sample depends on the run seed and the task only (not the stage): a stage replays
    the first rows of the task's one permutation, so a smaller count is a subset."""
    rows = replay_rows(50, 8, seed=0, task="t1")
    assert rows == replay_rows(50, 8, seed=0, task="t1")  # reproducible
    assert len(set(rows)) == 8 and rows == sorted(rows) and max(rows) < 50
    assert rows == sorted(replay_order(50, 0, "t1")[:8])
    assert sorted(replay_order(50, 0, "t1")) == list(range(50))
    assert set(replay_rows(50, 3, 0, "t1")) <= set(rows)
    assert rows != replay_rows(50, 8, seed=1, task="t1")  # different seeds differ
    assert rows != replay_rows(50, 8, seed=0, task="t2")  # different tasks differ
    with pytest.raises(ValueError, match="cannot replay 9 of 8"):
        replay_rows(8, 9, 0, "t1")


def test_a_buffer_is_the_share_of_the_stage_after_its_task():
    # stage sizes 40, 30, 20, and the current stage 4 of 60
    sizes = {1: 40, 2: 30, 3: 20, 4: 60}
    # examples: task 1 gets 12 at stage 2, task 2 half of 12 at stage 3, task 3 a third at 4
    assert buffer_sizes(ReplaySpec(examples=12), sizes) == {1: 12, 2: 6, 3: 4}
    assert buffer_sizes(ReplaySpec(examples=12, max_per_task=5), sizes) == {1: 5, 2: 5, 3: 4}
    # fraction 0.5 of the next stage's task: 15 of stage 2's 30, 10 / 2 at 3, 30 / 3 at 4
    assert buffer_sizes(ReplaySpec(examples=None, fraction=0.5), sizes) == {1: 15, 2: 5, 3: 10}
    with pytest.raises(ValueError, match="no stage 2"):
        buffer_sizes(ReplaySpec(), {1: 40, 3: 20})


def test_replayed_examples_keep_the_prompt_their_stage_trained_with(tmp_path, tiny_tokenizer):
    companions = [
        replay_companion(tmp_path, "t1", 1, 20, 2),
        replay_companion(tmp_path, "t2", 2, 3, 0),
    ]
    spec = ReplaySpec(examples=8, max_per_task=5)
    records, parts = replay_parts(spec, companions, 16, tiny_tokenizer, FMT, (0, 3))
    assert [r["examples"] for r in records] == [4, 3]
    # t1's buffer is its share at stage 2 (8, capped at 5); t2's is its share here
    assert [r["buffer"] for r in records] == [5, 3]
    assert [r["candidate_id"] for r in records] == [2, 0]
    assert records[0]["rows"] == replay_rows(20, 4, 0, "t1")
    first = tiny_tokenizer.decode(parts[0][0]["input_ids"])
    assert "Give the label." in first and "Say the label." not in first  # candidate 2
    assert f"sentence number {records[0]['rows'][0]} " in first
    again, _ = replay_parts(spec, companions, 16, tiny_tokenizer, FMT, (0, 3))
    assert again == records  # reproducible
    original, parts = replay_parts(
        ReplaySpec(examples=8, prompt="original"), companions, 16, tiny_tokenizer, FMT, (0, 3)
    )
    assert [r["candidate_id"] for r in original] == [0, 0]
    assert "Say the label." in tiny_tokenizer.decode(parts[0][0]["input_ids"])


def test_replay_adds_its_samples_through_the_method_hook(tmp_path, tiny_tokenizer):
    """The stage recipe asks the method for extra data: replay's is exactly replay_parts' (same
    rows, same order), keyed ``replayed`` in the stage record; joint companions are not its."""
    from types import SimpleNamespace

    companions = [
        replay_companion(tmp_path, "t1", 1, 20, 2),
        replay_companion(tmp_path, "t2", 2, 3, 0),
    ]
    joint = {**companions[0], "role": "joint", "task": "j"}
    options = {"replay": {"examples": 8, "max_per_task": 5}}
    job = SimpleNamespace(companions=[joint, *companions], options=options)
    spec = SimpleNamespace(job=job, fmt=FMT, seed=(0, 3))
    extra = METHODS["replay"].extra_training_data(spec, tiny_tokenizer, 16)
    records, parts = replay_parts(
        ReplaySpec(examples=8, max_per_task=5), companions, 16, tiny_tokenizer, FMT, (0, 3)
    )
    assert extra.record == {"replayed": records}
    assert [[e["input_ids"] for e in p] for p in extra.parts] == [
        [e["input_ids"] for e in p] for p in parts
    ]
    for name in ("seqlora", "inclora", "multitask"):
        none = METHODS[name].extra_training_data(spec, tiny_tokenizer, 16)
        assert none.parts == [] and none.record == {}


def _replayed(spec, companions, sizes, stage, tokenizer, seed=0) -> dict[str, dict]:
    """Stage ``stage``'s replay records by task (the companions of the stages before it)."""
    earlier = [c for c in companions if c["stage"] < stage]
    records, _ = replay_parts(spec, earlier, sizes[stage - 1], tokenizer, FMT, (seed, stage))
    return {r["task"]: r for r in records}


@pytest.mark.parametrize(
    "spec, examples",
    [
        # examples: 12 at stage 2, 6 + 6 at stage 3, 4 + 4 + 4 at stage 4
        (ReplaySpec(examples=12), {2: [12], 3: [6, 6], 4: [4, 4, 4]}),
        # a cap of 5 per task
        (ReplaySpec(examples=12, max_per_task=5), {2: [5], 3: [5, 5], 4: [4, 4, 4]}),
        # fraction 0.5 of 30, 20, 60: stage 4 asks 10 of task b, whose buffer (stage 3) is 5
        (ReplaySpec(examples=None, fraction=0.5), {2: [15], 3: [5, 5], 4: [10, 5, 10]}),
    ],
)
def test_replay_draws_each_task_from_one_buffer_over_a_sequence(
    tmp_path, tiny_tokenizer, spec, examples
):
    """Over 4 stages each task's rows at later stages are a prefix of its permutation within the
    rows of its first replay stage: the run replays at most its buffer of distinct examples."""
    sizes = [40, 30, 20, 60]  # tasks a, b, c, d at stages 1-4
    companions = [
        replay_companion(tmp_path, task, stage, n, 0)
        for stage, (task, n) in enumerate(zip("abcd", sizes, strict=True), 1)
    ]
    by_stage = {k: _replayed(spec, companions, sizes, k, tiny_tokenizer) for k in (2, 3, 4)}
    for k, counts in examples.items():
        assert [by_stage[k][t]["examples"] for t in "abc"[: k - 1]] == counts, k
    for j, task in enumerate("abc", 1):
        first = by_stage[j + 1][task]
        assert first["buffer"] == first["examples"]
        for k in range(j + 1, 5):
            later = by_stage[k][task]
            assert later["buffer"] == first["buffer"]  # the same buffer whatever the stage
            assert set(later["rows"]) <= set(first["rows"])
            assert later["examples"] <= later["buffer"]
            order = replay_order(sizes[j - 1], 0, task)
            assert later["rows"] == sorted(order[: later["examples"]])  # a prefix
    for k in (2, 3, 4):  # each stage replays at most its total
        assert sum(r["examples"] for r in by_stage[k].values()) <= spec.total(sizes[k - 1])
    other_seed = _replayed(spec, companions, sizes, 3, tiny_tokenizer, seed=1)
    assert other_seed["a"]["rows"] != by_stage[3]["a"]["rows"]


def test_a_tasks_buffer_does_not_depend_on_its_stage(tmp_path, tiny_tokenizer):
    """Task a first in one sequence and second in another: the same seed and task give the same
    rows for the same count."""
    spec = ReplaySpec(examples=12)
    a = replay_companion(tmp_path, "a", 1, 40, 0)
    first, _ = replay_parts(spec, [a], 24, tiny_tokenizer, FMT, (0, 2))
    x = replay_companion(tmp_path, "x", 1, 40, 0)
    later, _ = replay_parts(
        ReplaySpec(examples=24), [x, {**a, "stage": 2}], 24, tiny_tokenizer, FMT, (0, 3)
    )
    assert later[1]["task"] == "a" and later[1]["examples"] == first[0]["examples"] == 12
    assert later[1]["rows"] == first[0]["rows"]


def test_a_mixed_dataset_serves_its_parts_in_order_and_shares_the_epoch():
    a = PromptedDataset({0: [{"i": 0}, {"i": 1}]}, lambda e, i: 0)
    b = PromptedDataset({3: [{"i": 10}]}, lambda e, i: 3)
    mixed = MixedDataset([a, b])
    assert len(mixed) == 3 and [mixed[i]["i"] for i in range(3)] == [0, 1, 10]
    mixed.epoch = 2
    assert a.epoch == b.epoch == 2
    with pytest.raises(IndexError):
        mixed[3]


# --- EWC ------------------------------------------------------------------------------------------


def test_ewc_penalty_equals_a_hand_computation(tiny_model_dir):
    model = METHODS["ewc"].build_model(tiny_model_dir, [], LORA, 1, seed=0)
    params = lora_parameters(model, adapter_name(1))
    assert params and all(".stage_1." not in k and "lora_" in k for k in params)
    gen = torch.Generator().manual_seed(0)
    fisher = {k: torch.rand(p.shape, generator=gen) for k, p in params.items()}
    anchor = {k: torch.randn(p.shape, generator=gen) for k, p in params.items()}
    value, parts = ewc_penalty(model, adapter_name(1), fisher, anchor, lam=3.0)
    by_hand = sum(
        float((fisher[k] * (p.detach() - anchor[k]) ** 2).sum()) for k, p in params.items()
    )
    assert parts["ewc"] == pytest.approx(by_hand, rel=1e-5)
    assert float(value.detach()) == pytest.approx(1.5 * by_hand, rel=1e-5)
    value.backward()
    key = next(iter(params))
    expected = 3.0 * fisher[key] * (params[key].detach() - anchor[key])  # d/dθ of λ/2 F (θ-θ*)²
    torch.testing.assert_close(params[key].grad, expected, rtol=1e-5, atol=1e-6)


def test_the_fisher_is_the_mean_squared_gradient_of_each_example(tiny_model_dir, tiny_tokenizer):
    model = METHODS["ewc"].build_model(tiny_model_dir, [], LORA, 1, seed=0)
    params = lora_parameters(model, adapter_name(1))
    with torch.no_grad():  # B = 0 at init would leave A without gradient
        for key, p in params.items():
            if "lora_B" in key:
                p.normal_(0, 0.1)
    examples = encode_table(tiny_tokenizer, FMT, table(3, "yes"))
    collate = PadCollator(tiny_tokenizer.pad_token_id, left=True)
    fisher = diagonal_fisher(model, examples, collate, adapter_name(1))
    expected = {k: torch.zeros_like(p) for k, p in params.items()}
    model.eval()
    for example in examples:
        loss = model(**collate([example])).loss
        grads = torch.autograd.grad(loss, list(params.values()))
        for key, grad in zip(params, grads, strict=True):
            expected[key] += grad**2 / len(examples)
    for key in params:
        torch.testing.assert_close(fisher[key], expected[key], rtol=1e-4, atol=1e-10)
    assert any(float(v.sum()) > 0 for v in fisher.values())
    assert all(p.grad is None for p in params.values())  # gradients left clean


def test_the_fisher_accumulates_online():
    a, b = {"w": torch.tensor([1.0, 2.0])}, {"w": torch.tensor([0.5, 0.5])}
    torch.testing.assert_close(accumulate(a, b, 0.5)["w"], torch.tensor([1.0, 1.5]))
    assert accumulate(None, b, 0.5)["w"] is b["w"]
    with pytest.raises(ValueError, match="other parameters"):
        accumulate({"v": torch.zeros(2)}, b, 1.0)
    with pytest.raises(ValueError, match="ewc.gamma"):
        EwcSpec.from_config({"gamma": 2})


# --- LwF ------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def stage1_adapter(tiny_model_dir, tmp_path_factory) -> Path:
    model = build_stage_model(tiny_model_dir, [], LORA, 1, seed=1)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "lora_B" in name:
                p.normal_(0, 0.2)
    out = tmp_path_factory.mktemp("lwf") / "adapter1"
    save_adapter(model, adapter_name(1), out, str(tiny_model_dir))
    return out


def _batch(tokenizer):
    examples = encode_table(tokenizer, FMT, table(2, "yes"))
    return PadCollator(tokenizer.pad_token_id, left=True)(examples)


def test_the_teacher_is_the_state_before_the_stage(tiny_model_dir, tiny_tokenizer, stage1_adapter):
    model = METHODS["lwf"].build_model(tiny_model_dir, [stage1_adapter], LORA, 2, seed=0)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "lora_B.stage_2" in name:
                p.normal_(0, 0.5)
    batch = {k: v for k, v in _batch(tiny_tokenizer).items() if k != "labels"}
    model.train()
    with torch.no_grad(), without_adapter(model, adapter_name(2)):
        teacher = model(**batch).logits
    assert model.training  # mode restored
    before = load_state(tiny_model_dir, [stage1_adapter]).eval()
    with torch.no_grad():
        expected = before(**batch).logits
        student = model.eval()(**batch).logits
    torch.testing.assert_close(teacher, expected, rtol=1e-5, atol=1e-5)
    assert not torch.allclose(student, expected, atol=1e-3)  # the new LoRA does act


def test_distillation_is_zero_for_the_teacher_and_trains_only_the_new_lora(
    tiny_model_dir, tiny_tokenizer, stage1_adapter
):
    model = METHODS["lwf"].build_model(tiny_model_dir, [stage1_adapter], LORA, 2, seed=0)
    batch = _batch(tiny_tokenizer)
    term = METHODS["lwf"].loss_term(2, {"lwf": {"weight": 1.0, "temperature": 2.0}})
    model.eval()  # no dropout, so the student at init (B = 0) is the teacher
    outputs = model(**batch)
    value, parts = term(model, batch, outputs)
    assert float(value.detach()) == pytest.approx(0.0, abs=1e-6) and parts["lwf"] == pytest.approx(
        0, abs=1e-6
    )
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "lora_B.stage_2" in name:
                p.normal_(0, 0.5)
    outputs = model(**batch)
    value, _ = term(model, batch, outputs)
    assert float(value) > 0
    value.backward()
    grads = {n: p.grad for n, p in model.named_parameters()}
    assert all(g is not None for n, g in grads.items() if ".stage_2." in n)
    assert all(g is None for n, g in grads.items() if ".stage_2." not in n)


def test_distillation_on_known_logits():
    student = torch.tensor([[[0.0, 0.0], [1.0, 0.0], [5.0, 5.0]]])
    teacher = torch.tensor([[[0.0, 0.0], [0.0, 1.0], [9.0, 9.0]]])
    labels = torch.tensor([[-100, 1, -100]])  # position 0 predicts the one label
    value = distillation(student, teacher, labels, temperature=1.0)
    assert float(value) == pytest.approx(0.0)  # position 0: identical distributions
    labels = torch.tensor([[-100, -100, 1]])  # position 1
    p, q = torch.softmax(torch.tensor([0.0, 1.0]), 0), torch.softmax(torch.tensor([1.0, 0.0]), 0)
    by_hand = float((p * (p.log() - q.log())).sum())
    assert float(distillation(student, teacher, labels, 1.0)) == pytest.approx(by_hand)
    assert float(distillation(student, teacher, labels, 2.0)) > 0
    with pytest.raises(ValueError, match="lwf.temperature"):
        LwfSpec.from_config({"temperature": 0})


# --- the reference runs ---------------------------------------------------------------------------


def test_reference_runs_declare_their_rows_of_r():
    single, multitask = METHODS["single"], METHODS["multitask"]
    assert single.trained_stages(3) == [1, 2, 3] and single.state_before(3) == []
    assert single.state_after(3) == [3]
    assert multitask.trained_stages(3) == [3] and multitask.joint_stages(3) == [1, 2]
    assert multitask.state_before(3) == [] and multitask.state_after(3) == [3]
    assert METHODS["replay"].replayed_stages(3) == [1, 2]
    assert METHODS["replay"].state_before(3) == [2] and METHODS["ewc"].state_before(3) == [2]
    assert METHODS["lwf"].state_before(3) == [1, 2]
    assert np.all([METHODS[m].joint_stages(3) == [] for m in ("inclora", "replay", "single")])


def test_methods_that_share_their_first_stage_train_inclora_s_bitwise(tiny_model_dir, tmp_path):
    """What lets the DAG train one stage 1 for inclora, olora (lambda2 = 0), seqlora, replay,
    agem and single (:meth:`Method.shares_first_stage`): the whole stage job of each, with the
    schema's defaults for its config sections, saves the same LoRA bit for bit. LwF, which
    declares it does not share, distils towards the base model at stage 1 and differs; I-LoRA's
    fast learner is IncLoRA's too (nothing to replay yet), but it saves its slow one beside."""
    import yaml
    from safetensors.torch import load_file
    from snakemake.utils import validate

    from promptcl.train.recipe import run_stage

    config = yaml.safe_load((REPO / "config/config.yaml").read_text())
    validate(config, str(REPO / "config/schema.yaml"))

    def weights(method: str) -> dict[str, torch.Tensor]:
        options = METHODS[method].options(config)
        run_stage(stage_job(tmp_path / method, tiny_model_dir, method, options))
        return load_file(str(tmp_path / method / "adapter/adapter_model.safetensors"))

    sharing = [m for m, method in METHODS.items() if method.first_stage_is_shared(config)]
    assert sharing == ["inclora", "olora", "seqlora", "replay", "agem", "single"]
    first = weights("inclora")
    for method in sharing[1:]:
        other = weights(method)
        assert other.keys() == first.keys(), method
        assert all(torch.equal(other[k], first[k]) for k in first), method
    lwf = weights("lwf")
    assert not all(torch.equal(lwf[k], first[k]) for k in first)
    fast = weights("ilora")
    assert all(torch.equal(fast[k], first[k]) for k in first)
    assert (tmp_path / "ilora/adapter/slow/adapter_model.safetensors").is_file()
