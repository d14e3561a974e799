"""O-LoRA penalty on real stacked PEFT adapters of the tiny random Llama."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch
from peft.tuners.lora import LoraLayer

from promptcl.methods import METHODS, build_stage_model
from promptcl.methods.olora import (
    OLoraSpec,
    add_penalty,
    for_stage,
    lora_pairs,
    orthogonality_penalty,
)
from promptcl.model.adapters import save_adapter
from promptcl.model.batching import PadCollator
from promptcl.model.modeling import adapter_name
from promptcl.train import trainer as trainer_module
from promptcl.train.specs import LoraSpec

# r=2 keeps the hand computations small; hidden size 32 → A is (2, 32); B is (32, 2) for
# q_proj and (16, 2) for v_proj (2 kv heads × head dim 8).
LORA = LoraSpec(r=2, alpha=4, dropout=0.0, target_modules=("q_proj", "v_proj"))
N_MODULES = 4  # 2 layers × (q_proj, v_proj)


@pytest.fixture(scope="module")
def adapters(tiny_model_dir, tmp_path_factory) -> list[Path]:
    """Saved (untrained) stage-1 and stage-2 adapters, each with its own random A."""
    root = tmp_path_factory.mktemp("olora_adapters")
    dirs: list[Path] = []
    for stage in (1, 2):
        model = build_stage_model(tiny_model_dir, dirs, LORA, stage, seed=stage)
        out = root / f"adapter{stage}"
        save_adapter(model, adapter_name(stage), out, str(tiny_model_dir))
        dirs.append(out)
    return dirs


def _stage_model(model_dir: Path, adapters: list[Path], stage: int):
    return build_stage_model(model_dir, adapters[: stage - 1], LORA, stage, seed=10 + stage)


def _previous(stage: int) -> list[str]:
    return [adapter_name(i) for i in range(1, stage)]


def _layers(model) -> dict[str, LoraLayer]:
    """LoRA-wrapped modules by name, in a fixed order."""
    return {n: m for n, m in sorted(model.named_modules()) if isinstance(m, LoraLayer)}


def _mat(rows: int, cols: int, entries: dict[tuple[int, int], float]) -> torch.Tensor:
    out = torch.zeros(rows, cols)
    for (i, j), value in entries.items():
        out[i, j] = value
    return out


@torch.no_grad()
def _set(layer: LoraLayer, name: str, a: torch.Tensor | None = None, b: torch.Tensor | None = None):
    if a is not None:
        layer.lora_A[name].weight.copy_(a)
    if b is not None:
        layer.lora_B[name].weight.copy_(b[: layer.lora_B[name].weight.shape[0]])


# Known matrices used by several tests (only the first columns are nonzero).
A_OLD = _mat(2, 32, {(0, 0): 1, (0, 1): 2, (1, 2): 1})  # rows [1, 2, 0, …], [0, 0, 1, …]
A_NEW = _mat(2, 32, {(0, 0): 3, (0, 1): -1, (1, 1): 1, (1, 2): 2})  # [3, -1, 0, …], [0, 1, 2, …]
B_NEW = _mat(32, 2, {(0, 0): 2, (1, 1): -1, (2, 0): 2})
# ‖A_NEW‖ = √(9 + 1 + 1 + 4) = √15, ‖B_NEW‖ = √(4 + 1 + 4) = 3
NORMS = math.sqrt(15) + 3


def test_penalty_matches_hand_computation(tiny_model_dir, adapters):
    model = _stage_model(tiny_model_dir, adapters, 2)
    layers = _layers(model)
    assert len(layers) == N_MODULES
    for scale, layer in enumerate(layers.values(), start=1):
        _set(layer, "stage_1", A_OLD)
        _set(layer, "stage_2", scale * A_NEW, scale * B_NEW)

    # Module 1 (scale 1): A_OLD · A_NEWᵀ = [[1·3 + 2·(-1), 2·1], [0, 1·2]] = [[1, 2], [0, 2]],
    # so Σ|·| = 5; module s has s·A_NEW, so 5s.
    first = next(iter(layers.values()))
    a_new, [a_old], b_new = lora_pairs(model, "stage_2", ["stage_1"])[0]
    assert a_new is first.lora_A["stage_2"].weight and b_new is first.lora_B["stage_2"].weight
    assert a_old is first.lora_A["stage_1"].weight
    assert float((a_old @ a_new.T).abs().sum().detach()) == 5.0

    # Totals over modules s = 1..4: orthogonal 5·(1+2+3+4) = 50, l2 (1+2+3+4)·(√15 + 3).
    penalty, parts = orthogonality_penalty(
        model, "stage_2", ["stage_1"], OLoraSpec(lambda1=0.5, lambda2=0.1)
    )
    assert parts["orthogonal"] == 50.0
    assert parts["l2"] == pytest.approx(10 * NORMS, rel=1e-6)
    # 0.5·50 + 0.1·10·(√15 + 3) = 28 + √15
    assert float(penalty) == pytest.approx(28 + math.sqrt(15), rel=1e-6)
    assert penalty.dtype == torch.float32 and penalty.ndim == 0


def test_penalty_sums_over_every_earlier_adapter(tiny_model_dir, adapters):
    model = _stage_model(tiny_model_dir, adapters, 3)
    a1 = _mat(2, 32, {(0, 0): 1, (1, 1): 1})  # e0, e1
    a2 = _mat(2, 32, {(0, 2): 1, (1, 0): 1, (1, 1): 1, (1, 2): 1})  # e2, e0+e1+e2
    a3 = _mat(2, 32, {(0, 0): 1, (0, 1): 2, (0, 2): 3, (1, 2): -1})  # [1, 2, 3], [0, 0, -1]
    for layer in _layers(model).values():
        _set(layer, "stage_1", a1)
        _set(layer, "stage_2", a2)
        _set(layer, "stage_3", a3)
    # a1·a3ᵀ = [[1, 0], [2, 0]] → 3;  a2·a3ᵀ = [[3, -1], [6, -1]] → 11;  per module 14.
    _, parts = orthogonality_penalty(model, "stage_3", _previous(3), OLoraSpec())
    assert parts["orthogonal"] == N_MODULES * 14.0
    pairs = lora_pairs(model, "stage_3", _previous(3))
    assert [len(prev) for _, prev, _ in pairs] == [2] * N_MODULES


def test_first_stage_has_no_orthogonal_term(tiny_model_dir):
    model = build_stage_model(tiny_model_dir, [], LORA, 1)
    penalty, parts = orthogonality_penalty(model, "stage_1", [], OLoraSpec(lambda1=0.5))
    assert float(penalty) == 0.0 and not penalty.requires_grad
    assert parts["orthogonal"] == 0.0

    for layer in _layers(model).values():
        _set(layer, "stage_1", A_NEW, B_NEW)
    penalty, parts = orthogonality_penalty(
        model, "stage_1", [], OLoraSpec(lambda1=0.5, lambda2=0.25)
    )
    assert parts["l2"] == pytest.approx(N_MODULES * NORMS, rel=1e-6)
    # 0.25 · 4 · (√15 + 3)
    assert float(penalty) == pytest.approx(NORMS, rel=1e-6)
    assert penalty.requires_grad


def test_gradients_reach_only_the_new_adapter(tiny_model_dir, adapters):
    model = _stage_model(tiny_model_dir, adapters, 3)
    previous = _previous(3)
    old = [p for n, p in model.named_parameters() if ".stage_1." in n or ".stage_2." in n]
    assert old and not any(p.requires_grad for p in old)
    # Even if someone unfroze them, the penalty must not move earlier adapters.
    for p in old:
        p.requires_grad_(True)
    torch.manual_seed(0)
    for layer in _layers(model).values():
        with torch.no_grad():
            layer.lora_B["stage_3"].weight.normal_()
    spec = OLoraSpec(lambda1=0.5, lambda2=0.1)
    penalty, _ = orthogonality_penalty(model, "stage_3", previous, spec)
    penalty.backward()

    for name, p in model.named_parameters():
        if ".stage_3." in name:
            assert p.grad is not None and p.grad.abs().sum() > 0, name
        else:
            assert p.grad is None, name

    # Analytic gradient for one module: λ1 Σ_j sign(A_j A_newᵀ)ᵀ A_j + λ2 A_new / ‖A_new‖.
    layer = next(iter(_layers(model).values()))
    a_new = layer.lora_A["stage_3"].weight.detach()
    expected = spec.lambda2 * a_new / a_new.norm()
    for name in previous:
        a_old = layer.lora_A[name].weight.detach()
        expected += spec.lambda1 * torch.sign(a_old @ a_new.T).T @ a_old
    torch.testing.assert_close(layer.lora_A["stage_3"].weight.grad, expected)


def _hadamard(n: int) -> torch.Tensor:
    h = torch.ones(1, 1)
    while h.shape[0] < n:
        h = torch.kron(h, torch.tensor([[1.0, 1.0], [1.0, -1.0]]))
    return h


def test_orthogonal_subspaces_give_zero(tiny_model_dir, adapters):
    model = _stage_model(tiny_model_dir, adapters, 3)
    h = _hadamard(32)  # ±1 rows, pairwise orthogonal, sharing every coordinate
    assert torch.equal(h @ h.T, 32 * torch.eye(32))
    for layer in _layers(model).values():
        _set(layer, "stage_1", h[0:2])
        _set(layer, "stage_2", h[2:4])
        _set(layer, "stage_3", h[4:6])
    penalty, parts = orthogonality_penalty(model, "stage_3", _previous(3), OLoraSpec())
    assert parts["orthogonal"] == 0.0
    assert float(penalty) == 0.0

    for layer in _layers(model).values():
        _set(layer, "stage_3", h[4:6] + h[0:2])  # now overlaps stage_1's rows
    _, parts = orthogonality_penalty(model, "stage_3", _previous(3), OLoraSpec())
    assert parts["orthogonal"] == N_MODULES * 2 * 32.0  # (h0+h1)·h0 = 32 twice per module


def _new_grads(model, name: str) -> dict[str, torch.Tensor]:
    return {n: p.grad.clone() for n, p in model.named_parameters() if f".{name}." in n}


def test_gradient_accumulation_sees_one_penalty(tiny_model_dir, adapters):
    model = _stage_model(tiny_model_dir, adapters, 2)
    torch.manual_seed(1)
    for layer in _layers(model).values():
        with torch.no_grad():
            layer.lora_B["stage_2"].weight.normal_()
    spec = OLoraSpec(lambda1=0.5, lambda2=0.1)
    prev = ["stage_1"]

    penalty, _ = orthogonality_penalty(model, "stage_2", prev, spec)
    penalty.backward()
    one = _new_grads(model, "stage_2")
    model.zero_grad(set_to_none=True)

    total = 0.0
    for _ in range(4):  # four micro-batches of one update, task loss left out (zero)
        loss, _ = add_penalty(torch.zeros(()), model, "stage_2", prev, spec, grad_accum=4)
        loss.backward()
        total += float(loss)
    accumulated = _new_grads(model, "stage_2")
    model.zero_grad(set_to_none=True)
    assert total == pytest.approx(float(penalty), rel=1e-6)

    for _ in range(4):  # the reference code's way: the whole penalty on every micro-batch
        loss, _ = add_penalty(torch.zeros(()), model, "stage_2", prev, spec, grad_accum=1)
        loss.backward()
    naive = _new_grads(model, "stage_2")

    assert one.keys() == accumulated.keys() == naive.keys() and one
    for name in one:
        torch.testing.assert_close(accumulated[name], one[name])
        torch.testing.assert_close(naive[name], 4 * one[name])
    with pytest.raises(ValueError, match="grad_accum"):
        add_penalty(torch.zeros(()), model, "stage_2", prev, spec, grad_accum=0)


@pytest.mark.parametrize(
    "scaled_for_ga", [None, False], ids=["token-normalised", "trainer-divides"]
)
def test_stage_trainer_adds_one_penalty_per_update(
    tiny_model_dir, adapters, tmp_path, monkeypatch, scaled_for_ga
):
    """A real Trainer step with 2 micro-batches: penalty gradient = one undivided penalty's.

    ``None`` is transformers' default for this model (loss normalised over the accumulation
    window, Trainer does not divide); ``False`` makes the Trainer divide the returned loss.
    """
    from transformers import TrainerCallback, TrainingArguments

    from promptcl.train.trainer import _make_trainer_class

    divisors: list[int] = []
    real_divisor = trainer_module.penalty_divisor

    def spy(trainer, num_items_in_batch) -> int:
        divisors.append(real_divisor(trainer, num_items_in_batch))
        return divisors[-1]

    monkeypatch.setattr(trainer_module, "penalty_divisor", spy)
    spec = OLoraSpec(lambda1=0.5, lambda2=0.1)
    examples = [
        {"input_ids": list(range(100 + i, 110 + 2 * i)), "labels": [-100] * 4 + [7] * (6 + i)}
        for i in range(2)
    ]

    class Capture(TrainerCallback):
        """Gradients just before the (only) optimiser step, and the penalty's own gradient."""

        def on_pre_optimizer_step(self, args, state, control, model=None, **kwargs):
            self.grads = _new_grads(model, "stage_2")
            params = {n: p for n, p in model.named_parameters() if ".stage_2." in n}
            penalty, _ = orthogonality_penalty(model, "stage_2", ["stage_1"], spec)
            grads = torch.autograd.grad(penalty, list(params.values()))
            self.penalty_grads = dict(zip(params, grads, strict=True))

    class Trainer(_make_trainer_class()):
        loss_is_scaled_for_ga = scaled_for_ga

    def run(weights: OLoraSpec) -> Capture:
        capture = Capture()
        args = TrainingArguments(
            output_dir=str(tmp_path / f"out{weights.lambda1}"),
            max_steps=1,
            per_device_train_batch_size=1,
            gradient_accumulation_steps=2,
            learning_rate=1e-3,
            max_grad_norm=0.0,
            save_strategy="no",
            logging_steps=1,
            seed=0,
            use_cpu=True,
            report_to="none",
            remove_unused_columns=False,
            dataloader_num_workers=0,
            disable_tqdm=True,
        )
        trainer = Trainer(
            model=_stage_model(tiny_model_dir, adapters, 2),
            args=args,
            train_dataset=examples,
            data_collator=PadCollator(0),
            adapter="stage_2",
            callbacks=[capture],
            penalty=lambda m: orthogonality_penalty(m, "stage_2", ["stage_1"], weights),
        )
        trainer.train()
        logged = [h for h in trainer.state.log_history if "loss" in h]
        assert logged and {"penalty", "task_loss", "orthogonal", "l2"} <= logged[0].keys()
        return capture

    without = run(OLoraSpec(lambda1=0.0, lambda2=0.0))
    divisors.clear()
    with_penalty = run(spec)
    assert divisors == ([2, 2] if scaled_for_ga is None else [1, 1])
    for name, grad in with_penalty.grads.items():
        torch.testing.assert_close(
            grad - without.grads[name], with_penalty.penalty_grads[name], atol=1e-6, rtol=1e-5
        )


def test_for_stage_picks_per_stage_values():
    cfg = {"lambda1": [0.5, 0.1], "lambda2": 0.2}
    assert for_stage(cfg, 1) == OLoraSpec(lambda1=0.5, lambda2=0.2)
    assert for_stage(cfg, 2) == OLoraSpec(lambda1=0.1, lambda2=0.2)
    assert for_stage(cfg, 7) == OLoraSpec(lambda1=0.1, lambda2=0.2)  # last value repeats
    assert for_stage({"lambda2": [0, 1, 2]}, 3) == OLoraSpec(lambda1=0.5, lambda2=2.0)
    assert OLoraSpec.from_config({}) == OLoraSpec(lambda1=0.5, lambda2=0.0)
    assert OLoraSpec.from_config({"lambda1": 1}) == OLoraSpec(lambda1=1.0)
    for bad, match in [
        ({"lambda1": []}, "empty"),
        ({"lambda1": -0.1}, ">= 0"),
        ({"lambda1": "0.5"}, "number"),
        ({"lamda1": 0.5}, "unknown"),
    ]:
        with pytest.raises(ValueError, match=match):
            for_stage(bad, 1)
    with pytest.raises(ValueError, match="stage number"):
        OLoraSpec.from_config({"lambda1": [0.5, 0.1]})
    # the config check reads every stage's value of a list (it once refused lists outright)
    method = METHODS["olora"]
    method.check_config({"olora": {"lambda1": [0.5, 0.1], "lambda2": [0.0, 0.2, 0.0]}})
    with pytest.raises(ValueError, match="olora.lambda2: expected a finite number >= 0"):
        method.check_config({"olora": {"lambda2": [0.0, -1.0]}})


def test_lora_pairs_rejects_unknown_adapters(tiny_model_dir, adapters):
    model = _stage_model(tiny_model_dir, adapters, 2)
    with pytest.raises(ValueError, match="stage_9"):
        lora_pairs(model, "stage_9", ["stage_1"])
    with pytest.raises(ValueError, match="stage_0"):
        lora_pairs(model, "stage_2", ["stage_0", "stage_1"])
    with pytest.raises(ValueError, match="both"):
        lora_pairs(model, "stage_2", ["stage_2"])
