"""I-LoRA: the slow learner is the moving average of the fast one (one update, and over a real
training run on the tiny Llama), the one-sided consistency term, the adapter switching, the
stage artifacts (slow/ beside the fast adapter, continued at the next stage) and the configs."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

import pytest
import torch

from promptcl.methods import METHODS
from promptcl.methods.ewc import lora_parameters
from promptcl.methods.ilora import (
    SLOW,
    IloraSpec,
    consistency,
    ema_callback,
    ema_update,
    slow_learner,
)
from promptcl.model.adapters import save_adapter
from promptcl.model.batching import PadCollator
from promptcl.model.modeling import adapter_name, load_state
from promptcl.store.integrity import write_manifest
from promptcl.train.data import encode_table
from promptcl.train.trainer import fit
from tests.helpers.stages import FMT, LORA, replay_companion, spec, table

ILORA = METHODS["ilora"]


def _snapshot(model, adapter: str) -> dict[str, torch.Tensor]:
    return {k: p.detach().clone() for k, p in lora_parameters(model, adapter).items()}


def test_one_update_moves_the_slow_learner_by_the_rate(tiny_model_dir):
    model = ILORA.build_model(tiny_model_dir, [], LORA, 1)
    fast = adapter_name(1)
    with torch.no_grad():
        for p in lora_parameters(model, fast).values():
            p.add_(torch.randn_like(p))
    slow_before, fast_before = _snapshot(model, SLOW), _snapshot(model, fast)
    ema_update(model, fast, SLOW, 0.25)
    slow_after, fast_after = _snapshot(model, SLOW), _snapshot(model, fast)
    for key in slow_before:
        expected = 0.25 * slow_before[key] + 0.75 * fast_before[key]
        assert torch.allclose(slow_after[key], expected)
        assert torch.equal(fast_after[key], fast_before[key])


def test_the_rate_is_capped_by_the_update_count():
    spec_ = IloraSpec(buffer_size=4, ema=0.9, consistency_weight=1.0)
    assert [spec_.rate(t) for t in (1, 3, 100)] == [0.5, 0.75, 0.9]
    assert IloraSpec(4, 0.25, 1.0).rate(1) == 0.25  # the authors' default: β from update 1


def test_after_training_the_slow_learner_is_the_ema_of_the_fast_one(
    tmp_path, tiny_model_dir, tiny_tokenizer
):
    """Fit stage 1 with the moving-average callback; a second callback records the fast learner
    after every update: the slow learner ends as the recursion over those snapshots, starting
    from the fast learner's initial weights."""
    from transformers import TrainerCallback

    model = ILORA.build_model(tiny_model_dir, [], LORA, 1)
    fast = adapter_name(1)
    start = _snapshot(model, fast)
    assert all(torch.equal(start[k], v) for k, v in _snapshot(model, SLOW).items())
    options = IloraSpec(buffer_size=4, ema=0.6, consistency_weight=1.0)
    trajectory = []

    class Record(TrainerCallback):
        def on_step_end(self, args, state, control, model=None, **kwargs):
            trajectory.append((state.global_step, _snapshot(model, fast)))

    examples = encode_table(tiny_tokenizer, FMT, table(8, "yes"))
    callbacks = [Record(), ema_callback(options, fast)]  # the record sees fast before the EMA
    fit(model, tiny_tokenizer, examples, spec(batch_size=2), tmp_path / "state", callbacks)
    assert len(trajectory) == 4
    expected = start
    for step, weights in trajectory:
        beta = options.rate(step)
        expected = {k: beta * expected[k] + (1 - beta) * weights[k] for k in expected}
    slow = _snapshot(model, SLOW)
    assert all(torch.allclose(slow[k], expected[k], atol=1e-6) for k in slow)
    assert not all(torch.allclose(slow[k], trajectory[-1][1][k]) for k in slow)  # it lags


def test_consistency_pulls_the_fast_states_up_to_the_slow_ones_on_real_tokens():
    fast = (torch.tensor([[[1.0, 3.0], [9.0, 9.0]]]),)
    slow = (torch.tensor([[[2.0, 2.0], [0.0, 0.0]]]),)
    mask = torch.tensor([[1, 0]])  # the second position is padding
    # max(fast, slow) - fast = [1, 0] on the real token: mean of squares 0.5
    assert float(consistency(fast, slow, mask)) == pytest.approx(0.5)
    f = torch.tensor([[[1.0, 3.0]]], requires_grad=True)
    consistency((f,), (torch.tensor([[[2.0, 2.0]]]),), torch.tensor([[1]])).backward()
    assert f.grad.tolist() == [[[-1.0, 0.0]]]  # only the lower dimension is pulled (up)


def test_the_slow_forward_is_the_slow_adapter_alone(tmp_path, tiny_model_dir, tiny_tokenizer):
    model = ILORA.build_model(tiny_model_dir, [], LORA, 1)
    fast = adapter_name(1)
    with torch.no_grad():
        for p in lora_parameters(model, SLOW).values():
            p.add_(0.5 * torch.randn_like(p))
    batch = PadCollator(tiny_tokenizer.pad_token_id, left=True)(
        list(encode_table(tiny_tokenizer, FMT, table(2, "yes")))
    )
    batch.pop("labels")
    model.eval()
    plain = model(**batch).logits
    with slow_learner(model, fast):
        slow_logits = model(**batch).logits
    assert torch.equal(model(**batch).logits, plain)  # scalings restored
    save_adapter(model, SLOW, tmp_path / "slow", str(tiny_model_dir))
    save_adapter(model, fast, tmp_path / "fast", str(tiny_model_dir))
    for folder in ("slow", "fast"):
        write_manifest(tmp_path / folder)
    alone = load_state(tiny_model_dir, [tmp_path / "slow"])(**batch).logits
    assert torch.allclose(slow_logits, alone, atol=1e-5)
    fast_alone = load_state(tiny_model_dir, [tmp_path / "fast"])(**batch).logits
    assert torch.allclose(plain, fast_alone, atol=1e-5)  # outside, the slow one adds nothing
    assert not torch.allclose(slow_logits, plain, atol=1e-3)


def test_a_stage_saves_the_slow_learner_beside_the_fast_one_and_the_next_continues_both(
    tmp_path, tiny_model_dir
):
    model = ILORA.build_model(tiny_model_dir, [], LORA, 1)
    with torch.no_grad():
        for p in lora_parameters(model, SLOW).values():
            p.add_(1.0)
    out = tmp_path / "stage_1"
    save_adapter(model, adapter_name(1), out, str(tiny_model_dir))
    assert ILORA.finish(model, None, None, 1, {}, out) == {"ilora_slow": SLOW}
    assert (out / SLOW / "adapter_model.safetensors").is_file()
    write_manifest(out)
    later = ILORA.build_model(tiny_model_dir, [out], LORA, 2)
    for adapter, name in ((adapter_name(1), adapter_name(2)), (SLOW, SLOW)):
        saved, loaded = _snapshot(model, adapter), _snapshot(later, name)
        assert all(torch.equal(saved[k], loaded[k]) for k in saved)
    trainable = {n for n, p in later.named_parameters() if p.requires_grad}
    assert trainable and all(f".{adapter_name(2)}." in n for n in trainable)


def test_from_stage_2_each_micro_batch_adds_the_buffer_s_loss_and_consistency(
    tmp_path, tiny_model_dir, tiny_tokenizer
):
    companions = [replay_companion(tmp_path, "t1", 1, 6, 1)]
    job = SimpleNamespace(
        companions=companions,
        options={"ilora": {"buffer_size": 4, "ema": 0.25, "consistency_weight": 0.5}},
    )
    # the hooks of a stage with an earlier task (numbered 1 here so the fast adapter is stage_1's)
    stage = SimpleNamespace(job=job, fmt=FMT, seed=(0, 2), stage=1, state_dir=tmp_path / "s")
    model = ILORA.build_model(tiny_model_dir, [], LORA, 1)
    fast = adapter_name(1)
    hooks = ILORA.training_hooks(stage, model, tiny_tokenizer)
    assert hooks.record["ilora"]["buffer"][0]["examples"] == 4
    assert hooks.record["ilora"]["buffer"][0]["candidate_id"] == 1
    collate = PadCollator(tiny_tokenizer.pad_token_id, left=True)
    batch = collate(list(encode_table(tiny_tokenizer, FMT, table(2, "yes"))))
    model.train()
    value, parts = hooks.loss_term(model, batch, None)
    assert set(parts) == {"buffer_loss", "consistency"}
    assert float(value) == pytest.approx(parts["buffer_loss"] + 2 * 0.5 * parts["consistency"])
    value.backward()
    grads = [p.grad for n, p in model.named_parameters() if f".{fast}." in n]
    assert grads and all(g is not None for g in grads)
    assert all(p.grad is None for n, p in model.named_parameters() if f".{SLOW}." in n)
    job.companions = []
    assert ILORA.training_hooks(stage, model, tiny_tokenizer).loss_term is None


def test_ilora_declares_its_own_first_stage_and_a_buffer_of_every_earlier_task():
    assert not ILORA.first_stage_is_shared({})
    assert ILORA.state_before(3) == [2] and ILORA.state_after(3) == [3]
    assert ILORA.replayed_stages(3) == [1, 2]
    with pytest.raises(ValueError, match="ZeRO-3"):
        ILORA.check_launch(SimpleNamespace(deepspeed=str(_repo() / "config/deepspeed/zero3.json")))


def _repo() -> Path:
    from tests.helpers import REPO

    return REPO


@pytest.mark.parametrize(
    "cfg, key",
    [
        ({"buffer_size": 0, "ema": 0.25, "consistency_weight": 1.0}, "ilora.buffer_size"),
        ({"buffer_size": 4, "ema": 1.0, "consistency_weight": 1.0}, "ilora.ema"),
        ({"buffer_size": 4, "ema": 0.25, "consistency_weight": -1}, "ilora.consistency_weight"),
        ({"buffer_size": 4, "ema": 0.25, "consistency_weight": 1, "layers": 3}, "unknown"),
    ],
)
def test_ilora_config_errors_name_the_key(cfg, key):
    with pytest.raises(ValueError, match=key):
        IloraSpec.from_config(cfg)


def test_a_resumed_stage_ends_with_the_uninterrupted_fast_and_slow_learners(
    tmp_path, tiny_model_dir, tiny_tokenizer
):
    """Stopped after update 2 (a checkpoint holds the fast learner, and the slow one beside it)
    and resumed: both learners end as in the uninterrupted stage, buffer term included."""
    from transformers import TrainerCallback

    companions = [replay_companion(tmp_path, "t1", 1, 6, 0)]
    options = {"ilora": {"buffer_size": 4, "ema": 0.5, "consistency_weight": 1.0}}
    examples = encode_table(tiny_tokenizer, FMT, table(8, "yes"))

    class StopAt2(TrainerCallback):
        def on_step_end(self, args, state, control, **kw):
            if state.global_step == 2:
                control.should_training_stop = True

    def run(state: Path, extra=()) -> dict:
        job = SimpleNamespace(companions=companions, options=options)
        stage = SimpleNamespace(job=job, fmt=FMT, seed=(0, 2), stage=1, state_dir=state)
        model = ILORA.build_model(tiny_model_dir, [], LORA, 1)
        hooks = ILORA.training_hooks(stage, model, tiny_tokenizer)
        train = spec(max_steps=4, batch_size=2, save_steps=2)
        fit(model, tiny_tokenizer, examples, train, state, [*hooks.callbacks, *extra], None, None,
            hooks.loss_term)  # fmt: skip
        return {
            **_snapshot(model, adapter_name(1)),
            **{f"slow.{k}": v for k, v in _snapshot(model, SLOW).items()},
        }

    full = run(tmp_path / "full")
    run(tmp_path / "part", [StopAt2()])
    assert (tmp_path / "part/checkpoint-2/ilora_slow.safetensors").is_file()
    resumed = run(tmp_path / "part")
    for key, want in full.items():
        assert torch.allclose(want, resumed[key], atol=1e-6), key
