"""What a continual-learning method is: its declarations for the DAG and the stage model it
builds. Torch-free at import (the DAG imports the registry); model code is imported lazily."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, ClassVar

from promptcl.train.specs import LoraSpec, TrainSpec

if TYPE_CHECKING:
    from promptcl.train.job import StageSpec

CONFIG_KEY = "runs.methods"


@dataclass
class ExtraData:
    """Training data a method adds to a stage's own (replay's rehearsal rows): one dataset per
    part, mixed after the stage's tasks, and the entries the stage record keeps about them."""

    parts: list = field(default_factory=list)
    record: dict = field(default_factory=dict)


@dataclass
class TrainingHooks:
    """What a method adds to stage k's training loop besides data and a weight penalty:
    ``callbacks`` (Trainer callbacks: A-GEM's projection before each optimiser step, I-LoRA's
    moving average after it), a per-micro-batch ``loss_term`` (see
    :data:`promptcl.train.trainer.LossTerm`) and ``record``, entries for the stage record (a
    callback may update it in place while training; it is written once training ends)."""

    callbacks: list = field(default_factory=list)
    loss_term: object = None
    record: dict = field(default_factory=dict)


class Method:
    """A method: one module each, registered in :data:`promptcl.methods.METHODS`."""

    name: ClassVar[str]
    #: config sections its training reads (besides lora and training): params of its stages
    config_sections: ClassVar[tuple[str, ...]] = ()

    # --- what the DAG needs ----------------------------------------------------------------

    def state_before(self, stage: int) -> list[int]:
        """The stages whose LoRAs make the state stage k starts from (and SAPO scores on)."""
        raise NotImplementedError

    def state_after(self, stage: int) -> list[int]:
        """The stages whose LoRAs make the state evaluated after stage k."""
        raise NotImplementedError

    def trained_stages(self, stages: int) -> list[int]:
        """The stages this method trains, and after which its run is evaluated (the rows of R
        it defines besides row 0): every stage by default."""
        return list(range(1, stages + 1))

    def joint_stages(self, stage: int) -> list[int]:
        """Earlier stages whose tasks stage k also trains with the run's prompt strategy, as
        if they were its own (``multitask``); none by default."""
        return []

    def replayed_stages(self, stage: int) -> list[int]:
        """Earlier stages whose tasks stage k mixes samples of into its data, each with the
        prompt its own stage trained with (``replay``); none by default."""
        return []

    def shares_first_stage(self, config: dict) -> bool:
        """Whether stage 1 trains exactly what IncLoRA's stage 1 trains: a new LoRA on task 1
        from the base model, with the task loss only and nothing saved beside the adapter.

        Such a run's stage 1 (adapter, training log, predictions) is IncLoRA's stage 1 of the
        same sequence, strategy and seed, trained once for all of them. False by default, and
        never inherited (see :meth:`first_stage_is_shared`)."""
        return False

    def first_stage_is_shared(self, config: dict) -> bool:
        """:meth:`shares_first_stage` as the method's own class declares it: a subclass that
        does not declare it itself trains its own stage 1, since it may change what that
        stage trains (LwF subclasses IncLoRA and distils at stage 1)."""
        return "shares_first_stage" in type(self).__dict__ and self.shares_first_stage(config)

    def training_overrides(self, options: dict) -> dict:
        """``training`` settings this method's stages replace, from its options (OSF's learning
        rate: its factors are a full-rank parameterisation, trained at a full fine-tuning
        rate); none by default."""
        return {}

    def options(self, config: dict) -> dict:
        return {section: config[section] for section in self.config_sections}

    def check_config(self, config: dict) -> None:
        """Raise ValueError naming the key when its config sections are inconsistent (checked
        while the workflow is parsed, before any job runs)."""

    # --- what the stage job needs ------------------------------------------------------------

    def check_launch(self, train: TrainSpec) -> None:
        """Refuse launches the method cannot run under (e.g. a DeepSpeed stage), by config key."""

    def _refuse_zero3(self, train: TrainSpec, reads: str) -> None:
        """ZeRO-3 shards the LoRA weights a penalty reads outside the forward pass."""
        from promptcl.train.trainer import zero_stage

        if train.deepspeed and zero_stage(train.deepspeed) == 3:
            raise ValueError(
                f"training.deepspeed: {train.deepspeed} is ZeRO-3, which shards the {reads} "
                f"the {self.name} penalty reads outside the forward pass; "
                "use config/deepspeed/zero2.json"
            )

    def build_stage_model(self, spec: StageSpec, previous: Sequence[Path]):
        """The model that trains stage k of a job (:meth:`build_model` with the job's settings;
        a method that needs its config section to build, as OSF, overrides this)."""
        job = spec.job
        return self.build_model(
            Path(job.model_dir),
            previous,
            spec.lora,
            spec.stage,
            spec.precision,
            job.model["trust_remote_code"],
            spec.seed[0],
        )

    def build_model(
        self,
        model_dir: Path,
        previous: Sequence[Path],
        lora: LoraSpec,
        stage: int,
        precision: str = "fp32",
        trust_remote_code: bool = False,
        seed: int = 0,
    ):
        """The model that trains stage k; ``previous`` = the adapters of :meth:`state_before`.

        A new LoRA's A matrix is random: seeding here makes a rerun (or a resumed job, whose
        weights come from the checkpoint anyway) reproduce the same adapter.
        """
        raise NotImplementedError

    def extra_training_data(self, spec: StageSpec, tokenizer, current: int) -> ExtraData:
        """Datasets stage k trains on besides its tasks' (``replay``'s samples of earlier tasks),
        built from ``spec.job.companions``; ``current``: the current task's training examples.
        None by default, so the stage recipe never needs to know a concrete method."""
        return ExtraData()

    def training_hooks(self, spec: StageSpec, model, tokenizer) -> TrainingHooks:
        """The callbacks, loss term and record entries of stage k's training (built in the stage
        job once the model exists): :meth:`loss_term` alone by default."""
        return TrainingHooks(loss_term=self.loss_term(spec.stage, spec.job.options))

    def penalty(self, stage: int, options: dict, previous: Sequence[Path] = ()):
        """A weight penalty added once per optimiser update (see promptcl.train.trainer), or None.

        ``previous``: the adapter folders of :meth:`state_before` (what EWC anchors to)."""
        return None

    def loss_term(self, stage: int, options: dict):
        """A term of each micro-batch's loss, ``term(model, inputs, outputs) -> (tensor,
        parts)``, from the batch and the model's outputs on it (LwF's distillation), or None."""
        return None

    def finish(
        self,
        model,
        dataset,
        collator,
        stage: int,
        options: dict,
        out_dir: Path,
        precision: str = "fp32",
        previous: Sequence[Path] = (),
    ) -> dict:
        """After training, on rank 0, before the stage record is written: save what later
        stages need beside the adapter (EWC's Fisher); returns entries for the stage record."""
        return {}

    def _check_previous(self, stage: int, previous: Sequence[Path]) -> None:
        expected = len(self.state_before(stage))
        if len(previous) != expected:
            raise ValueError(
                f"{self.name} stage {stage} needs {expected} earlier adapter(s), "
                f"got {len(previous)}"
            )


def _base(model_dir: Path, precision: str, trust_remote_code: bool, seed: int):
    from transformers import set_seed

    from promptcl.model.modeling import load_base_model

    model = load_base_model(model_dir, precision, trust_remote_code)
    set_seed(seed)
    return model
