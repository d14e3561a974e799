"""IncLoRA stage training, adapter stacking and resume on a tiny random model."""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
import pytest
import torch
from peft import PeftModel
from safetensors.torch import load_file

from promptcl.methods import build_stage_model
from promptcl.model.adapters import save_adapter
from promptcl.model.batching import PadCollator
from promptcl.model.modeling import load_base_model, load_state
from promptcl.prompts.prompting import IGNORE_INDEX
from promptcl.train.data import encode_table
from promptcl.train.specs import SCHEMA, TrainSpec, schema_defaults
from promptcl.train.trainer import fit
from tests.helpers.models import tiny_gemma3
from tests.helpers.stages import FMT, LORA, spec, stage_job, table, train, training


@pytest.fixture(scope="module")
def two_stages(tiny_model_dir, tiny_tokenizer, tmp_path_factory):
    root = tmp_path_factory.mktemp("stages")
    a1 = train(tiny_model_dir, tiny_tokenizer, [], 1, root, "yes")
    a2 = train(tiny_model_dir, tiny_tokenizer, [a1], 2, root, "no")
    return root, a1, a2


def test_collator_masks_padding_and_prompt(tiny_tokenizer):
    examples = encode_table(tiny_tokenizer, FMT, table(2, "yes").assign(input=["a", "b c d e"]))
    for ex in examples:
        answer = [t for t in ex["labels"] if t != IGNORE_INDEX]
        assert tiny_tokenizer.decode(answer) == "yes<|im_end|>"
    batch = PadCollator(tiny_tokenizer.pad_token_id)(examples)
    short = int(batch["attention_mask"][0].sum())
    assert short < batch["input_ids"].shape[1]
    assert (batch["labels"][0, short:] == IGNORE_INDEX).all()


def test_only_the_new_lora_trains(tiny_model_dir, two_stages):
    _, a1, _ = two_stages
    model = build_stage_model(tiny_model_dir, [a1], LORA, 2)
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert trainable and all(".stage_2." in n and ".lora_" in n for n in trainable)
    assert model.base_model.active_adapters == ["stage_1", "stage_2"]


def test_adapter_folder_is_standard_peft(tiny_model_dir, two_stages):
    _, a1, _ = two_stages
    assert (a1 / "adapter_config.json").is_file() and (a1 / "adapter_model.safetensors").is_file()
    model = PeftModel.from_pretrained(load_base_model(tiny_model_dir), str(a1))
    assert any("lora_A" in n for n, _ in model.named_parameters())
    config = json.loads((a1 / "adapter_config.json").read_text())
    assert config["r"] == 4 and config["lora_alpha"] == 16


def _merged_reference(model_dir: Path, adapters: list[Path]) -> torch.nn.Module:
    """Base weights + Σ_k (alpha_k / r_k) B_k A_k, computed by hand from the adapter files."""
    base = load_base_model(model_dir)
    params = dict(base.named_parameters())
    with torch.no_grad():
        for adapter in adapters:
            cfg = json.loads((adapter / "adapter_config.json").read_text())
            scale = cfg["lora_alpha"] / cfg["r"]
            weights = load_file(str(adapter / "adapter_model.safetensors"))
            for key, a in weights.items():
                if ".lora_A." not in key:
                    continue
                b = weights[key.replace(".lora_A.", ".lora_B.")]
                target = key.split("base_model.model.", 1)[1].replace(".lora_A.weight", ".weight")
                params[target] += scale * (b @ a)
    return base.eval()


def test_stacked_state_equals_merged_deltas(tiny_model_dir, tiny_tokenizer, two_stages):
    _, a1, a2 = two_stages
    ids = torch.tensor([tiny_tokenizer("hello there, general kenobi")["input_ids"]])
    stacked = load_state(tiny_model_dir, [a1, a2])
    reference = _merged_reference(tiny_model_dir, [a1, a2])
    base = load_state(tiny_model_dir)
    with torch.no_grad():
        got, want, plain = stacked(ids).logits, reference(ids).logits, base(ids).logits
    assert torch.allclose(got, want, atol=1e-5)
    assert not torch.allclose(got, plain, atol=1e-3), "the adapters must change the logits"
    # a wrong scaling (e.g. alpha of the default config, or only the last adapter) is caught
    only_last = _merged_reference(tiny_model_dir, [a2])
    with torch.no_grad():
        assert not torch.allclose(got, only_last(ids).logits, atol=1e-4)


def test_training_lowers_loss_and_logs_steps(two_stages):
    root, _, _ = two_stages
    info = json.loads((root / "log1.json").read_text())
    assert info["steps"] == 2 and info["examples"] == 8 and info["tokens"] > 0


def test_resume_from_checkpoint_gives_same_adapter(tiny_model_dir, tiny_tokenizer, tmp_path):
    """An interrupted stage resumed from its checkpoint ends with the uninterrupted adapter."""
    full = train(tiny_model_dir, tiny_tokenizer, [], 1, tmp_path / "full", "yes", max_steps=4)
    # interrupted run: stop after 2 steps (a checkpoint at step 2), then resume to 4
    part = tmp_path / "part"
    model = build_stage_model(tiny_model_dir, [], LORA, 1)
    examples = encode_table(tiny_tokenizer, FMT, table(8, "yes"))
    from transformers import TrainerCallback

    class StopAt2(TrainerCallback):
        def on_step_end(self, args, state, control, **kw):
            if state.global_step == 2:
                control.should_training_stop = True

    fit(model, tiny_tokenizer, examples, spec(max_steps=4), part / "state1", [StopAt2()])
    assert (part / "state1" / "checkpoint-2").is_dir()
    model = build_stage_model(tiny_model_dir, [], LORA, 1)
    result = fit(model, tiny_tokenizer, examples, spec(max_steps=4), part / "state1")
    assert result.info["resumed_from"].endswith("checkpoint-2")
    save_adapter(model, "stage_1", part / "adapter1", str(tiny_model_dir))
    want = load_file(str(full / "adapter_model.safetensors"))
    got = load_file(str(part / "adapter1" / "adapter_model.safetensors"))
    assert want.keys() == got.keys()
    for key in want:
        assert torch.allclose(want[key], got[key], atol=1e-6), key


def test_sapo_rescoring_switches_prompts_and_checkpoints_its_history(
    tiny_model_dir, tiny_tokenizer, tmp_path
):
    from promptcl.strategies import SapoOptions
    from promptcl.strategies.sapo import HISTORY_FILE, Selection, rescore_callback
    from promptcl.train.data import PromptedDataset, encode_candidates

    calls: list[int] = []

    def scorer(model) -> pd.DataFrame:
        assert not model.training, "scoring runs in eval mode"
        calls.append(1)
        losses = [1.0, 0.5] if len(calls) % 2 else [0.5, 1.0]
        return pd.DataFrame({"candidate_id": [0, 1], "mean_batch_loss": losses})

    selection = Selection(0)
    texts = {0: "Say the label.", 1: "Give the label of this sentence now."}
    encodings = encode_candidates(tiny_tokenizer, FMT, table(8, "yes"), texts)
    dataset = PromptedDataset(encodings, selection.choose)
    model = build_stage_model(tiny_model_dir, [], LORA, 1)
    callback = rescore_callback(selection, scorer, 1, SapoOptions(), seed=(0, 1))
    state = tmp_path / "state"
    fit(model, tiny_tokenizer, dataset, spec(max_steps=4), state, [callback])
    # re-scored after steps 1-3 (not after the last one), switching by the scorer's argmin
    assert selection.history == [
        {"step": 0, "candidate_id": 0},
        {"step": 1, "candidate_id": 1},
        {"step": 2, "candidate_id": 0},
        {"step": 3, "candidate_id": 1},
    ]
    assert dataset[0] == encodings[1][0], "the dataset serves the current choice"
    saved = json.loads((state / "checkpoint-2" / HISTORY_FILE).read_text())
    assert saved == selection.history[:3]
    resumed = Selection(1)
    resumed.restore(str(state / "checkpoint-2"))
    assert resumed.current == 0 and resumed.history == saved


def test_a_periodic_callback_acts_in_eval_mode_and_checkpoints_its_state(tmp_path):
    """The training-loop part of re-scoring, for any strategy: every N steps but the last, in
    eval mode (train mode restored), and the strategy's state written into each checkpoint."""
    from types import SimpleNamespace

    from promptcl.train.callbacks import every_steps_in_eval

    seen: list[tuple[int, bool]] = []
    callback = every_steps_in_eval(
        2, lambda model, step: seen.append((step, model.training)), "state.json", lambda: "[7]"
    )
    model = torch.nn.Linear(2, 2).train()
    args = SimpleNamespace(output_dir=str(tmp_path))
    for step in range(1, 7):
        callback.on_step_end(args, SimpleNamespace(global_step=step, max_steps=6), None, model)
        assert model.training
    assert seen == [(2, False), (4, False)]  # not after step 6, the last
    (tmp_path / "checkpoint-4").mkdir()
    for step in (4, 5):  # a checkpoint folder the Trainer did not write is not created
        callback.on_save(args, SimpleNamespace(global_step=step, max_steps=6), None)
    assert (tmp_path / "checkpoint-4" / "state.json").read_text() == "[7]"
    assert not (tmp_path / "checkpoint-5").exists()


# --- optimisation that does not depend on the launch ---------------------------------------------


def test_warmup_ratio_is_a_ratio_over_its_whole_range(tiny_model_dir, tiny_tokenizer, tmp_path):
    """warmup_ratio 1.0 warms up over the whole stage (transformers would read 1.0 as 1 step)."""
    model = build_stage_model(tiny_model_dir, [], LORA, 1)
    examples = encode_table(tiny_tokenizer, FMT, table(16, "yes"))
    warm = spec(max_steps=4, warmup_ratio=1.0, batch_size=4)
    result = fit(model, tiny_tokenizer, examples, warm, tmp_path / "state")
    lrs = list(result.log["lr"])
    assert lrs == sorted(lrs) and len(set(lrs)) == 4, f"lr must rise at every step: {lrs}"
    assert lrs[-1] < warm.learning_rate, "the peak comes only after the last step"


def test_global_batch_size_derives_the_accumulation_from_the_process_count():
    from promptcl.train.specs import accumulation_steps

    def spec_of(**kw) -> TrainSpec:
        return TrainSpec.from_config(training(**kw), seed=0, precision="fp32")

    spec = spec_of(batch_size=8, global_batch_size=64)
    assert [accumulation_steps(spec, p) for p in (1, 2, 4, 8)] == [8, 4, 2, 1]
    assert spec.batching(4) == {
        "processes": 4,
        "micro_batch": 8,
        "grad_accum": 2,
        "effective_batch": 64,
    }
    with pytest.raises(ValueError, match="training.global_batch_size=64 is not a multiple"):
        accumulation_steps(spec, 3)
    with pytest.raises(ValueError, match="not both"):
        accumulation_steps(spec_of(batch_size=8, grad_accum=2, global_batch_size=64), 1)
    assert accumulation_steps(spec_of(grad_accum=3), 8) == 3
    assert accumulation_steps(spec_of(), 8) == 1


def test_specs_take_their_defaults_from_the_validated_config_and_name_a_missing_key():
    """The schema is the one home of the training and LoRA defaults: snakemake's validate fills
    them in, the specs read them (a config that skipped validation fails naming the key)."""
    import yaml
    from snakemake.utils import validate

    from promptcl.train.job import LAUNCH_KEYS
    from promptcl.train.specs import LoraSpec

    config = yaml.safe_load((SCHEMA.parents[1] / "config/config.yaml").read_text())
    del config["training"], config["lora"]
    validate(config, str(SCHEMA))
    assert config["training"] == schema_defaults("training")
    assert LoraSpec.from_config(config["lora"]) == LoraSpec(8, 32, 0.1, ("q_proj", "v_proj"))
    cfg = {k: v for k, v in config["training"].items() if k not in LAUNCH_KEYS}
    assert TrainSpec.from_config(cfg, seed=0, precision="fp32") == spec(
        epochs=1, learning_rate=1e-3, batch_size=8, save_steps=50
    )
    del cfg["save_steps"]
    with pytest.raises(ValueError, match=r"^training\.save_steps: missing from the config"):
        TrainSpec.from_config(cfg, seed=0, precision="fp32")
    with pytest.raises(ValueError, match=r"^lora\.alpha: missing from the config"):
        LoraSpec.from_config({k: v for k, v in config["lora"].items() if k != "alpha"})


# --- safe resume ---------------------------------------------------------------------------------


def test_checkpoints_of_changed_input_contents_are_discarded(tiny_model_dir, tmp_path):
    """An upstream rerun that rewrites a task table in place must not resume old checkpoints."""
    from promptcl.train.job import claim_state_dir

    job = stage_job(tmp_path, tiny_model_dir)
    state = Path(job.state_dir)
    claim_state_dir(state, job.fingerprint(1))
    (state / "checkpoint-2").mkdir()
    claim_state_dir(state, job.fingerprint(1))
    assert (state / "checkpoint-2").is_dir(), "the same job resumes"
    table(8, "no").to_parquet(job.train)  # same path, new contents
    claim_state_dir(state, job.fingerprint(1))
    assert not (state / "checkpoint-2").exists(), "changed inputs: old checkpoints are discarded"


def test_merged_state_gives_the_stacked_logits(tiny_model_dir, tiny_tokenizer, two_stages):
    """Evaluation folds the frozen LoRAs into the weights once: the same logits in fp32, and in
    bf16 no further from the exact (fp32) logits than the unmerged bf16 model is."""
    _, a1, a2 = two_stages
    ids = torch.tensor([tiny_tokenizer("the adapters are merged once per job")["input_ids"]])

    def logits(precision: str, merge: bool) -> torch.Tensor:
        model = load_state(tiny_model_dir, [a1, a2], precision, merge=merge)
        if merge:
            assert not any("lora" in n for n, _ in model.named_parameters())
        with torch.no_grad():
            return model(ids).logits.float()

    exact = logits("fp32", merge=False)
    assert (logits("fp32", merge=True) - exact).abs().max() < 1e-5
    stacked_error = (logits("bf16", merge=False) - exact).abs().max()
    merged_error = (logits("bf16", merge=True) - exact).abs().max()
    assert merged_error <= 2 * stacked_error, (float(merged_error), float(stacked_error))


def test_left_padded_answer_logits_give_the_full_loss_and_gradients(tiny_model_dir, tiny_tokenizer):
    """Training projects only the answer positions to the vocabulary (left padding, position
    ids from the mask, logits_to_keep): the same loss and gradients as the full right-padded
    computation."""
    from promptcl.model.batching import answer_window, crop_to_answers

    examples = encode_table(
        tiny_tokenizer, FMT, table(4, "yes").assign(input=["a", "b c d e f g", "h i", "j k l"])
    )

    def loss_and_grads(batch: dict) -> tuple[float, dict]:
        model = build_stage_model(tiny_model_dir, [], LORA, 1, seed=3)
        loss = model(**batch).loss
        loss.backward()
        grads = {n: p.grad.clone() for n, p in model.named_parameters() if p.requires_grad}
        return float(loss), grads

    full_loss, full_grads = loss_and_grads(PadCollator(tiny_tokenizer.pad_token_id)(examples))
    left = PadCollator(tiny_tokenizer.pad_token_id, left=True)(examples)
    keep = answer_window(left["labels"])
    assert keep < left["labels"].shape[1] // 2, "only the answer window is projected"
    cropped = crop_to_answers(left)
    assert cropped["labels"].shape[1] == keep
    loss, grads = loss_and_grads(cropped)
    assert loss == pytest.approx(full_loss, rel=1e-5)
    for name, grad in grads.items():
        torch.testing.assert_close(grad, full_grads[name], rtol=1e-3, atol=1e-5)
    right = PadCollator(tiny_tokenizer.pad_token_id)(examples)
    assert answer_window(right["labels"]) > keep, "right padding: a wider window, still exact"


def test_loss_positions_of_left_padding_are_the_final_window(tiny_tokenizer):
    """The gathered loss positions reduce to the final answer window for left padding: the
    default path keeps its indices (and its results) exactly."""
    from promptcl.model.batching import answer_window, last_positions, loss_positions

    examples = encode_table(
        tiny_tokenizer, FMT, table(3, "yes").assign(input=["a", "b c d e f", "g h"])
    )
    labels = PadCollator(tiny_tokenizer.pad_token_id, left=True)(examples)["labels"]
    want = last_positions(labels.shape[1], answer_window(labels))
    assert torch.equal(loss_positions(labels), want)


def _packable(tokenizer) -> list[dict]:
    """Three examples of different lengths and answers."""
    frame = table(3, "yes").assign(input=["a", "b c d e f g h", "i j"])
    frame["references"] = [["yes"], ["no"], ["maybe so"]]
    return encode_table(tokenizer, FMT, frame)


def test_packed_batch_gives_the_padded_loss_and_gradients(tiny_model_dir, tiny_tokenizer):
    """training.packing: one row per micro-batch, no padding; the loss and every gradient equal
    the left-padded batch's (fp32), with only the answer positions projected."""
    from promptcl.model.batching import PackCollator, crop_to_answers

    examples = _packable(tiny_tokenizer)

    def loss_and_grads(batch: dict) -> tuple[float, dict]:
        model = build_stage_model(tiny_model_dir, [], LORA, 1, seed=3)
        model.train()
        loss = model(**crop_to_answers(batch)).loss
        loss.backward()
        grads = {n: p.grad.clone() for n, p in model.named_parameters() if p.requires_grad}
        return float(loss), grads

    packed = PackCollator()(examples)
    assert packed["input_ids"].shape == (1, sum(len(ex["input_ids"]) for ex in examples))
    assert "attention_mask" not in packed and packed["use_cache"] is False
    kept = crop_to_answers(packed)["logits_to_keep"]
    answers = sum(sum(t != IGNORE_INDEX for t in ex["labels"]) for ex in examples)
    assert len(kept) == answers + len(examples), "each answer and the position predicting it"
    loss, grads = loss_and_grads(packed)
    want_loss, want_grads = loss_and_grads(
        PadCollator(tiny_tokenizer.pad_token_id, left=True)(examples)
    )
    assert loss == pytest.approx(want_loss, rel=1e-5)
    for name, grad in grads.items():
        torch.testing.assert_close(grad, want_grads[name], rtol=1e-3, atol=1e-6)


@pytest.mark.parametrize("attention", ["eager", "sdpa", "cpu_dispatch"])
@pytest.mark.parametrize("family", ["llama", "gemma3"])
def test_packed_examples_do_not_attend_to_each_other(
    tiny_model_dir, tiny_tokenizer, attention, family
):
    """Masking across packed examples: each example's logits in the packed row equal its logits
    alone, and changing the example before it changes none of them (Llama, and Gemma 3 whose
    sliding window spans the whole row), in training mode with the model's cache setting on."""
    from promptcl.model.batching import PackCollator
    from promptcl.model.modeling import use_attention

    if family == "llama":
        model = build_stage_model(tiny_model_dir, [], LORA, 1, seed=3)
        examples = _packable(tiny_tokenizer)
    else:
        model = tiny_gemma3(window=4)
        examples = [
            {"input_ids": ids, "labels": ids}
            for ids in ([5, 6, 7, 8, 9, 10], [11, 12, 13, 14, 15, 16, 17], [18, 19, 20])
        ]
    assert model.config.use_cache, "the packed batch itself must switch the cache off"
    use_attention(model, attention, training=True)
    model.train()

    def row_logits(batch: list[dict]) -> torch.Tensor:
        inputs = PackCollator()(batch)
        del inputs["labels"]
        return model(**inputs).logits[0]

    packed = row_logits(examples)
    start = 0
    for ex in examples:
        alone = row_logits([ex])
        width = len(ex["input_ids"])
        torch.testing.assert_close(packed[start : start + width], alone, rtol=1e-4, atol=1e-5)
        start += width
    changed = [{**examples[0], "input_ids": [3] * len(examples[0]["input_ids"])}, *examples[1:]]
    later = len(examples[0]["input_ids"])
    torch.testing.assert_close(row_logits(changed)[later:], packed[later:], rtol=1e-4, atol=1e-5)


def test_packed_training_follows_the_padded_loss_curve(tiny_model_dir, tiny_tokenizer, tmp_path):
    """fit() with training.packing: the same batches (length-grouped), the same loss curve as
    left padding within float rounding (no LoRA dropout, whose masks are drawn per shape)."""
    logs = {}
    for packing in (False, True):
        model = build_stage_model(tiny_model_dir, [], LORA, 1, seed=3)
        examples = encode_table(
            tiny_tokenizer,
            FMT,
            table(8, "yes").assign(input=[f"w{i} " * (i + 1) for i in range(8)]),
        )
        result = fit(
            model,
            tiny_tokenizer,
            examples,
            spec(epochs=2, packing=packing),
            tmp_path / str(packing),
        )
        logs[packing] = result.log
    assert len(logs[True]) == len(logs[False]) == 4
    assert list(logs[True]["tokens"]) == list(logs[False]["tokens"]), "real tokens, no padding"
    torch.testing.assert_close(
        torch.tensor(logs[True]["loss"].to_numpy()),
        torch.tensor(logs[False]["loss"].to_numpy()),
        rtol=1e-5,
        atol=0,
    )


def test_length_grouped_order_is_seeded_by_epoch_and_sorted_per_window():
    from promptcl.model.batching import LengthGroupedSampler

    lengths = [5, 90, 12, 40, 77, 3, 61, 29, 18, 50, 8, 95, 33]
    sampler = LengthGroupedSampler(lengths, window=4, seed=7)
    first = list(sampler)
    assert sorted(first) == list(range(len(lengths))), "each example once per epoch"
    assert list(LengthGroupedSampler(lengths, window=4, seed=7)) == first, "seeded, not global RNG"
    for start in range(0, len(first), 4):
        window = [lengths[i] for i in first[start : start + 4]]
        assert window == sorted(window, reverse=True), "each window longest first"
    sampler.set_epoch(1)
    assert list(sampler) != first, "a new order every epoch"
    assert list(LengthGroupedSampler(lengths, window=4, seed=8)) != first
    with pytest.raises(ValueError, match="window"):
        LengthGroupedSampler(lengths, window=0, seed=0)


def _varied_table(n: int) -> pd.DataFrame:
    frame = table(n, "yes")
    frame["input"] = [" ".join(["word"] * (1 + (7 * i) % 23)) for i in range(n)]
    return frame


def test_length_grouped_training_batches_and_mid_epoch_resume(
    tiny_model_dir, tiny_tokenizer, tmp_path, monkeypatch
):
    """training.length_grouping: each optimiser-step window's micro-batches are cut from one
    length-sorted run (less padding than random batches), and a job stopped mid-epoch resumes
    on the same batches to the uninterrupted adapter."""
    from transformers import TrainerCallback

    from promptcl.train import trainer as trainer_module

    widths: list[int] = []
    real: list[int] = []

    class Spy(PadCollator):
        def __call__(self, batch):
            out = super().__call__(batch)
            widths.append(out["input_ids"].numel())
            real.append(int(out["attention_mask"].sum()))
            return out

    monkeypatch.setattr(trainer_module, "collator", lambda pad, packing: Spy(pad, left=True))
    examples = encode_table(tiny_tokenizer, FMT, _varied_table(16))

    def run(state: Path, grouping: int, callbacks=()) -> dict:
        model = build_stage_model(tiny_model_dir, [], LORA, 1)
        kw = dict(epochs=2, save_steps=3, length_grouping=grouping)
        fit(model, tiny_tokenizer, examples, spec(**kw), state, list(callbacks))
        return {k: v.detach().clone() for k, v in model.state_dict().items() if "lora" in k}

    run(tmp_path / "random", 0)
    random_efficiency = sum(real) / sum(widths)
    widths.clear(), real.clear()
    full = run(tmp_path / "grouped", 2)
    assert sum(real) / sum(widths) > random_efficiency, "grouped batches carry less padding"

    class StopAt5(TrainerCallback):
        def on_step_end(self, args, state, control, **kw):
            if state.global_step == 5:
                control.should_training_stop = True

    run(tmp_path / "part", 2, [StopAt5()])
    assert (tmp_path / "part" / "checkpoint-3").is_dir(), "mid-epoch checkpoint (4 steps/epoch)"
    resumed = run(tmp_path / "part", 2)
    for key, want in full.items():
        assert torch.allclose(want, resumed[key], atol=1e-6), key
