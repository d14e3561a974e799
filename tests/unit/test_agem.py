"""A-GEM: the projection rule on known vectors, the callback on the tiny Llama's real gradients
(it projects exactly when gᵀg_ref < 0), once per optimiser update under accumulation, and the
launches and configs it refuses."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch

from promptcl.methods import METHODS
from promptcl.methods.agem import AgemSpec, project, projection_callback, reference_gradient
from promptcl.methods.replay import seeded_rows
from promptcl.model.batching import PadCollator
from promptcl.train.data import encode_table
from promptcl.train.trainer import fit
from tests.helpers.stages import FMT, LORA, replay_companion, spec, table

# --- the rule -----------------------------------------------------------------------------------


def test_a_conflicting_update_is_projected_onto_the_reference_s_normal_plane():
    g = [torch.tensor([1.0, -2.0]), torch.tensor([0.5])]
    ref = [torch.tensor([-1.0, 1.0]), torch.tensor([2.0])]
    flat_g, flat_r = torch.cat(g), torch.cat(ref)
    dot = float(flat_g @ flat_r)  # -1 - 2 + 1 = -2
    expected = flat_g - dot / float(flat_r @ flat_r) * flat_r
    projected, reported = project(g, ref)
    assert projected and reported == pytest.approx(dot)
    assert torch.allclose(torch.cat(g), expected)
    assert float(torch.cat(g) @ flat_r) == pytest.approx(0.0, abs=1e-6)  # no longer conflicts


def test_an_update_that_does_not_conflict_is_left_exactly_as_it_was():
    g = [torch.tensor([1.0, 2.0]), torch.tensor([3.0])]
    before = [t.clone() for t in g]
    for ref in ([torch.tensor([1.0, 0.0]), torch.tensor([0.0])], [torch.zeros(2), torch.zeros(1)]):
        projected, dot = project(g, ref)
        assert not projected and dot >= 0
        assert all(torch.equal(a, b) for a, b in zip(g, before, strict=True))


def test_the_dot_product_is_over_all_parameters_as_one_vector():
    """Per tensor, the first conflicts and the second agrees; over both the update agrees, so
    nothing is projected (a per-tensor rule would have changed the first)."""
    g = [torch.tensor([1.0]), torch.tensor([3.0])]
    ref = [torch.tensor([-1.0]), torch.tensor([1.0])]
    projected, dot = project(g, ref)
    assert not projected and dot == pytest.approx(2.0)
    assert torch.equal(g[0], torch.tensor([1.0]))


# --- on the tiny model ------------------------------------------------------------------------


def _lora_model(tiny_model_dir):
    return METHODS["agem"].build_model(tiny_model_dir, [], LORA, 1)


def _examples(tokenizer, label, n=8):
    return list(encode_table(tokenizer, FMT, table(n, label)))


def test_the_callback_projects_exactly_when_the_memory_gradient_conflicts(
    tiny_model_dir, tiny_tokenizer
):
    """Real LoRA gradients of a batch and of memory batches drawn at many updates: each update
    is projected iff its dot product with that update's reference gradient is negative, to a
    gradient orthogonal to it; otherwise the gradient is bit-for-bit unchanged."""
    torch.manual_seed(0)
    model = _lora_model(tiny_model_dir)
    model.train()
    collate = PadCollator(tiny_tokenizer.pad_token_id, left=True)
    memory = _examples(tiny_tokenizer, "no", 6) + _examples(tiny_tokenizer, "maybe so", 6)
    options = AgemSpec(memory_per_task=6, reference_examples=2)
    stats = {"updates": 0, "projected": 0}
    callback = projection_callback(memory, options, collate, (0, 2), stats)
    params = [p for p in model.parameters() if p.requires_grad]
    batch = collate(_examples(tiny_tokenizer, "yes", 4))
    args = SimpleNamespace(per_device_train_batch_size=2, bf16=False)
    seen = set()
    for step in range(12):
        model.zero_grad()
        model(**batch).loss.backward()
        g = [p.grad.clone() for p in params]
        rows = seeded_rows(len(memory), 2, 0, 2, step)
        chosen = [memory[i] for i in rows]
        ref = reference_gradient(model, params, chosen, collate, 2, False, (0, 2, step))
        dot = float(sum((a.double() * b.double()).sum() for a, b in zip(g, ref, strict=True)))
        callback.on_pre_optimizer_step(args, SimpleNamespace(global_step=step), None, model=model)
        after = [p.grad for p in params]
        if dot < 0:
            new_dot = sum((a.double() * b.double()).sum() for a, b in zip(after, ref, strict=True))
            assert abs(float(new_dot)) < 1e-6 * abs(dot)
            assert not all(torch.equal(a, b) for a, b in zip(after, g, strict=True))
        else:
            assert all(torch.equal(a, b) for a, b in zip(after, g, strict=True))
        seen.add(dot < 0)
    assert seen == {True, False}, "the draws should hit both cases"
    assert stats["updates"] == 12 and 0 < stats["projected"] < 12


def test_the_reference_gradient_leaves_accumulated_gradients_alone(tiny_model_dir, tiny_tokenizer):
    model = _lora_model(tiny_model_dir)
    collate = PadCollator(tiny_tokenizer.pad_token_id, left=True)
    model(**collate(_examples(tiny_tokenizer, "yes", 2))).loss.backward()
    params = [p for p in model.parameters() if p.requires_grad]
    before = [p.grad.clone() for p in params]
    memory = _examples(tiny_tokenizer, "no", 5)
    whole = reference_gradient(model, params, memory, collate, 5, False)
    split = reference_gradient(model, params, memory, collate, 2, False)  # 2 + 2 + 1
    assert all(torch.equal(p.grad, b) for p, b in zip(params, before, strict=True))
    # micro-batching weighs each micro-batch by its answer tokens: the same mean loss
    assert all(torch.allclose(a, b, atol=1e-5) for a, b in zip(whole, split, strict=True))


@pytest.mark.parametrize("checkpointing", [False, True])
def test_one_projection_per_optimiser_update_under_gradient_accumulation(
    tmp_path, tiny_model_dir, tiny_tokenizer, checkpointing
):
    """Four micro-batches, two updates: two projections; also with gradient checkpointing
    (transformers' non-reentrant kind, which ``torch.autograd.grad`` needs)."""
    model = _lora_model(tiny_model_dir)
    collate = PadCollator(tiny_tokenizer.pad_token_id, left=True)
    memory = _examples(tiny_tokenizer, "no", 4)
    stats = {"updates": 0, "projected": 0}
    callback = projection_callback(memory, AgemSpec(4, 2), collate, (0, 2), stats)
    examples = encode_table(tiny_tokenizer, FMT, table(8, "yes"))
    result = fit(
        model,
        tiny_tokenizer,
        examples,
        spec(batch_size=2, grad_accum=2, gradient_checkpointing=checkpointing),  # 4 micro, 2 up
        tmp_path / "state",
        callbacks=[callback],
    )
    assert result.info["steps"] == 2
    assert stats["updates"] == 2


def test_the_memory_draw_is_seeded_by_run_stage_and_update():
    assert seeded_rows(20, 4, 0, 2, 5) == seeded_rows(20, 4, 0, 2, 5)
    assert len(set(seeded_rows(20, 4, 0, 2, 5))) == 4
    assert {tuple(seeded_rows(20, 4, 0, 2, s)) for s in range(6)} != {
        tuple(seeded_rows(20, 4, 0, 2, 0))
    }
    assert seeded_rows(3, 8, 0, 2, 0) == [0, 1, 2]  # a small memory is used whole


# --- the DAG, the memory, refusals ---------------------------------------------------------------


def test_agem_keeps_memory_per_task_of_every_earlier_task():
    method = METHODS["agem"]
    assert method.state_before(3) == [2] and method.state_after(3) == [3]
    assert method.replayed_stages(3) == [1, 2]
    assert method.first_stage_is_shared({})
    memory = AgemSpec(memory_per_task=5, reference_examples=2).memory(3)
    assert memory.counts(100, [40, 40, 3]) == [5, 5, 3]


def test_the_memory_is_built_from_the_earlier_tasks_training_tables(tmp_path, tiny_tokenizer):
    """Replay's buffers, kept out of the training data: memory_per_task rows of each earlier
    task, with the prompt its stage trained with, in the stage record."""
    companions = [
        replay_companion(tmp_path, "t1", 1, 10, 2),
        replay_companion(tmp_path, "t2", 2, 2, 0),
    ]
    job = SimpleNamespace(
        companions=companions, options={"agem": {"memory_per_task": 3, "reference_examples": 2}}
    )
    stage = SimpleNamespace(job=job, fmt=FMT, seed=(0, 3), stage=3, state_dir=tmp_path / "s")
    hooks = METHODS["agem"].training_hooks(stage, None, tiny_tokenizer)
    memory = hooks.record["agem"]["memory"]
    assert [(m["task"], m["examples"], m["candidate_id"]) for m in memory] == [
        ("t1", 3, 2),
        ("t2", 2, 0),  # a task smaller than the memory gives all it has
    ]
    assert len(hooks.callbacks) == 1 and hooks.loss_term is None
    assert METHODS["agem"].extra_training_data(stage, tiny_tokenizer, 8).parts == []
    job.companions = []  # stage 1: no memory, plain seqlora
    assert METHODS["agem"].training_hooks(stage, None, tiny_tokenizer).callbacks == []


@pytest.mark.parametrize("ds", ["config/deepspeed/zero2.json", "config/deepspeed/zero3.json"])
def test_agem_refuses_deepspeed_naming_the_key(ds):
    from tests.helpers import REPO

    train = SimpleNamespace(deepspeed=str(REPO / ds))
    with pytest.raises(ValueError, match="training.deepspeed"):
        METHODS["agem"].check_launch(train)
    METHODS["agem"].check_launch(SimpleNamespace(deepspeed=None))


@pytest.mark.parametrize(
    "cfg, key",
    [
        ({"memory_per_task": 0, "reference_examples": 2}, "agem.memory_per_task"),
        ({"memory_per_task": 4, "reference_examples": 1.5}, "agem.reference_examples"),
        ({"memory_per_task": 4, "reference_examples": 2, "margin": 0.5}, "unknown keys"),
    ],
)
def test_agem_config_errors_name_the_key(cfg, key):
    with pytest.raises(ValueError, match=key):
        AgemSpec.from_config(cfg)


def test_a_resumed_stage_ends_as_the_uninterrupted_one(tmp_path, tiny_model_dir, tiny_tokenizer):
    """Stopped after update 2 and resumed: the same memory draws and dropout masks per update,
    so the same LoRA and the same projection counts as the uninterrupted stage."""
    from transformers import TrainerCallback

    companions = [replay_companion(tmp_path, "t1", 1, 8, 0)]
    options = {"agem": {"memory_per_task": 6, "reference_examples": 2}}
    examples = encode_table(tiny_tokenizer, FMT, table(8, "yes"))

    class StopAt2(TrainerCallback):
        def on_step_end(self, args, state, control, **kw):
            if state.global_step == 2:
                control.should_training_stop = True

    def run(state, extra=()) -> tuple[dict, dict]:
        job = SimpleNamespace(companions=companions, options=options)
        stage = SimpleNamespace(job=job, fmt=FMT, seed=(0, 2), stage=2, state_dir=state)
        model = _lora_model(tiny_model_dir)
        hooks = METHODS["agem"].training_hooks(stage, model, tiny_tokenizer)
        train = spec(max_steps=4, batch_size=2, save_steps=2)
        fit(model, tiny_tokenizer, examples, train, state, [*hooks.callbacks, *extra])
        weights = {n: p.detach().clone() for n, p in model.named_parameters() if p.requires_grad}
        return weights, hooks.record["agem"]["steps"]

    full, counts = run(tmp_path / "full")
    run(tmp_path / "part", [StopAt2()])
    resumed, resumed_counts = run(tmp_path / "part")
    assert resumed_counts == counts and counts["updates"] == 4
    for key, want in full.items():
        assert torch.allclose(want, resumed[key], atol=1e-6), key
